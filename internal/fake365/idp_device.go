package fake365

// BlockDeviceFlow makes the device flow fail as it does in a tenant where
// a Conditional Access policy blocks it (Microsoft's managed policy "Block
// device code flow" turns itself on in tenants that never used the flow):
// the person can enter the code, and the poll is answered with
// invalid_grant AADSTS53003.
func (p *IdP) BlockDeviceFlow(on bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.deviceBlocked = on
}

// DeviceWithoutRefreshToken makes device-code sign-ins return no refresh
// token even with offline_access, as seen in Security Defaults tenants.
func (p *IdP) DeviceWithoutRefreshToken(on bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.deviceNoRefresh = on
}
