package fake365

import (
	"crypto/rand"
	"fmt"
	"html"
	"net/http"
	"net/url"
	"strings"
	"time"
)

// The device authorization flow: the device code endpoint, the
// /devicelogin page, the device code grant, and the knobs tests use to
// approve, decline, block and throttle it.

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

type idpDevice struct {
	deviceCode, userCode string
	clientID             string
	scopes               []string
	expires              time.Time
	interval             time.Duration
	lastPoll             time.Time
	user                 *idpUser // set by ApproveDevice
	declined             bool
}

// ApproveDevice signs username (added if unknown) in for the device code
// whose user code is userCode, as the user would at /devicelogin.
func (p *IdP) ApproveDevice(userCode, username string) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	d, err := p.pendingDeviceLocked(userCode)
	if err != nil {
		return fmt.Errorf("approve device code: %w", err)
	}
	d.user = p.userLocked(username)
	return nil
}

// DeclineDevice makes the device code whose user code is userCode answer
// authorization_declined from now on.
func (p *IdP) DeclineDevice(userCode string) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	d, err := p.pendingDeviceLocked(userCode)
	if err != nil {
		return fmt.Errorf("decline device code: %w", err)
	}
	d.declined = true
	return nil
}

func (p *IdP) pendingDeviceLocked(userCode string) (*idpDevice, error) {
	d := p.userCodes[strings.ToUpper(strings.TrimSpace(userCode))]
	switch {
	case d == nil:
		return nil, fmt.Errorf("unknown user code %q", userCode)
	case !p.now().Before(d.expires):
		return nil, fmt.Errorf("user code %q expired", userCode)
	case d.user != nil || d.declined:
		return nil, fmt.Errorf("user code %q already answered", userCode)
	}
	return d, nil
}

// LastUserCode returns the user code of the newest device code, "" if none.
func (p *IdP) LastUserCode() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.lastUserCode
}

// SetDeviceInterval sets the polling interval of device codes issued
// afterwards (default 5s). The answer carries it in whole seconds, rounded
// up; with 0 the IdP never says slow_down unless forced (ForceSlowDown).
// Note that x/oauth2's
// DeviceAccessToken treats an interval of 0 as 5s.
func (p *IdP) SetDeviceInterval(d time.Duration) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.deviceInterval = max(d, 0)
}

// ForceSlowDown makes the next n device code polls answer slow_down.
func (p *IdP) ForceSlowDown(n int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.forceSlowDown = n
}

func (p *IdP) deviceGrantLocked(client Client, form url.Values) (*idpTokenResponse, *idpError) {
	code := form.Get("device_code")
	if code == "" {
		return nil, idpMissing("device_code")
	}
	d := p.devices[code]
	if d == nil {
		return nil, idpErr(http.StatusBadRequest, "bad_verification_code", 70000,
			"The provided device code was not recognized.")
	}
	if d.clientID != client.ID {
		return nil, idpOtherClientGrant()
	}
	now := p.now()
	if !now.Before(d.expires) {
		return nil, idpErr(http.StatusBadRequest, "expired_token", 70019, "Verification code expired.")
	}
	last := d.lastPoll
	d.lastPoll = now
	// Clients poll on a timer and requests take varying time to arrive, so
	// allow some slack before calling a poll early.
	early := d.interval > 0 && !last.IsZero() && now.Sub(last) < d.interval-min(d.interval/2, time.Second)
	if p.forceSlowDown > 0 || early {
		if p.forceSlowDown > 0 {
			p.forceSlowDown--
		}
		return nil, idpErr(http.StatusBadRequest, "slow_down", 70016,
			"OAuth 2.0 device flow error. Polling too frequently; increase the interval by 5 seconds.")
	}
	switch {
	case p.deviceBlocked:
		delete(p.devices, d.deviceCode)
		delete(p.userCodes, d.userCode)
		return nil, idpErr(http.StatusBadRequest, "invalid_grant", 53003,
			"Access has been blocked by Conditional Access policies. The access policy does not allow token issuance.")
	case d.declined:
		return nil, idpErr(http.StatusBadRequest, "authorization_declined", 70000,
			"The end user denied the authorization request.")
	case d.user == nil:
		return nil, idpErr(http.StatusBadRequest, "authorization_pending", 70016,
			"OAuth 2.0 device flow error. Authorization is pending. Continue polling.")
	}
	delete(p.devices, d.deviceCode)
	delete(p.userCodes, d.userCode)
	p.stats.DeviceCodes++
	return p.issueLocked(client.ID, d.user, d.scopes, d.scopes, "", idpHasScope(d.scopes, "offline_access") && !p.deviceNoRefresh), nil
}

func (p *IdP) handleDeviceCode(w http.ResponseWriter, r *http.Request) {
	r.Body = http.MaxBytesReader(w, r.Body, idpMaxForm)
	if err := r.ParseForm(); err != nil {
		p.writeError(w, r, idpMalformed())
		return
	}
	clientID, scope := r.PostForm.Get("client_id"), r.PostForm.Get("scope")
	userCode, deviceCode := idpUserCode(), "DAQABIQEAAAD"+idpRandText(320)

	p.mu.Lock()
	var e *idpError
	switch _, known := p.clients[clientID]; {
	case clientID == "":
		e = idpMissing("client_id")
	case !known:
		e = p.unknownClientLocked(clientID)
	case scope == "":
		e = idpMissing("scope")
	}
	if e != nil {
		p.mu.Unlock()
		p.writeError(w, r, e)
		return
	}
	now := p.now()
	for p.userCodes[userCode] != nil {
		userCode = idpUserCode()
	}
	d := &idpDevice{
		deviceCode: deviceCode,
		userCode:   userCode,
		clientID:   clientID,
		scopes:     idpDedupe(strings.Fields(scope)),
		expires:    now.Add(idpDeviceCodeLifetime),
		interval:   p.deviceInterval,
	}
	if len(p.devices) >= idpPruneMin {
		for k, old := range p.devices {
			if !now.Before(old.expires) {
				delete(p.devices, k)
				delete(p.userCodes, old.userCode)
			}
		}
	}
	p.devices[deviceCode] = d
	p.userCodes[userCode] = d
	p.lastUserCode = userCode
	p.mu.Unlock()

	verify := p.URL + "/devicelogin"
	idpWriteJSON(w, http.StatusOK, struct {
		UserCode        string `json:"user_code"`
		DeviceCode      string `json:"device_code"`
		VerificationURI string `json:"verification_uri"`
		ExpiresIn       int64  `json:"expires_in"`
		Interval        int64  `json:"interval"`
		Message         string `json:"message"`
	}{
		UserCode:        userCode,
		DeviceCode:      deviceCode,
		VerificationURI: verify,
		ExpiresIn:       int64(idpDeviceCodeLifetime / time.Second),
		Interval:        int64((d.interval + time.Second - 1) / time.Second),
		Message: fmt.Sprintf("To sign in, use a web browser to open the page %s and enter the code %s to authenticate.",
			verify, userCode),
	})
}

// handleDeviceLogin is a bare page where a person can approve a device code
// by hand (the demo); tests call ApproveDevice.
func (p *IdP) handleDeviceLogin(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	if r.Method == http.MethodPost {
		r.Body = http.MaxBytesReader(w, r.Body, idpMaxForm)
		code, user := r.PostFormValue("code"), r.PostFormValue("username")
		if user == "" {
			p.mu.Lock()
			user = p.signInAs
			p.mu.Unlock()
		}
		if user == "" {
			w.WriteHeader(http.StatusBadRequest)
			fmt.Fprint(w, "<!doctype html>\n<p>Enter a username.</p>\n")
			return
		}
		if err := p.ApproveDevice(code, user); err != nil {
			w.WriteHeader(http.StatusBadRequest)
			fmt.Fprintf(w, "<!doctype html>\n<p>%s</p>\n", html.EscapeString(err.Error()))
			return
		}
		fmt.Fprintf(w, "<!doctype html>\n<p>%s is signed in. You may close this window.</p>\n", html.EscapeString(user))
		return
	}
	p.mu.Lock()
	user := p.signInAs
	p.mu.Unlock()
	fmt.Fprintf(w, `<!doctype html>
<title>Enter code</title>
<h1>Enter code</h1>
<form method="post">
<p><label>Code <input name="code" autofocus></label></p>
<p><label>Sign in as <input name="username" value="%s"></label></p>
<p><button>Next</button></p>
</form>
`, html.EscapeString(user))
}

// idpUserCode returns a code like "BCDF-GHJK", without vowels or look-alikes.
func idpUserCode() string {
	const alphabet = "BCDFGHJKLMNPQRSTVWXZ"
	var b [8]byte
	rand.Read(b[:])
	out := make([]byte, 0, 9)
	for i, c := range b {
		if i == 4 {
			out = append(out, '-')
		}
		out = append(out, alphabet[int(c)%len(alphabet)])
	}
	return string(out)
}
