package fake365

import (
	"strings"

	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-smtp"
)

// Exchange Online's answers to the setup mistakes that cost admins the most
// time, spelled as Exchange spells them, for SMTPUpstream.FailAt and the
// IMAP knobs below (smtp_faults.go has more: SMTPAuthDisabled for the
// tenant, SMTPSendAsDenied). `mailproxy check -account` explains each one.
var (
	// SMTPAuthDisabledMailbox: SMTP AUTH is off for the mailbox (AUTH).
	SMTPAuthDisabledMailbox = &smtp.SMTPError{Code: 535, EnhancedCode: smtp.EnhancedCode{5, 7, 139},
		Message: "Authentication unsuccessful, SmtpClientAuthentication is disabled for the Mailbox. Visit https://aka.ms/smtp_auth_disabled for more information. [AM0PR01CA0123.eurprd01.prod.exchangelabs.com 2026-12-01T10:00:00.000Z 08DD0A1B2C3D4E5F]"}
	// SMTPMailboxLogonFailed: an app-only token was accepted, but the
	// service principal has no access to the mailbox (DATA).
	SMTPMailboxLogonFailed = &smtp.SMTPError{Code: 430, EnhancedCode: smtp.EnhancedCode{4, 2, 0},
		Message: "STOREDRV; mailbox logon failure; Failed to process message due to a permanent exception with message [BeginDiagnosticData]Cannot open mailbox /o=ExchangeLabs/ou=Exchange Administrative Group (FYDIBOHF23SPDLT)/cn=Recipients/cn=scanner. MapiExceptionLogonFailed: 0x80040111 [EndDiagnosticData]"}
)

// IMAP texts.
const (
	imapNotConnectedText = "User is authenticated but not connected."
)

// RefuseApps makes AUTHENTICATE XOAUTH2 with an app-only token for mailbox
// fail with "NO AUTHENTICATE failed.", as Exchange does when the app's
// service principal is missing (New-ServicePrincipal) or has no
// FullAccess to the mailbox. Delegated tokens are unaffected.
func (u *IMAPUpstream) RefuseApps(mailbox string, on bool) {
	u.setFlag(u.refuseApps, mailbox, on)
}

// NotConnected makes mailbox's sessions authenticate and then answer
// "BAD User is authenticated but not connected." to SELECT, EXAMINE,
// STATUS and LIST, as Exchange does when the token is good but the
// mailbox cannot be opened for it.
func (u *IMAPUpstream) NotConnected(mailbox string, on bool) {
	u.setFlag(u.notConnected, mailbox, on)
}

func (u *IMAPUpstream) setFlag(m map[string]bool, mailbox string, on bool) {
	u.mu.Lock()
	defer u.mu.Unlock()
	m[strings.ToLower(mailbox)] = on
}

func (u *IMAPUpstream) flag(m map[string]bool, mailbox string) bool {
	u.mu.Lock()
	defer u.mu.Unlock()
	return m[strings.ToLower(mailbox)]
}

var errNotConnected = &imap.Error{Type: imap.StatusResponseTypeBad, Text: imapNotConnectedText}

func (s *imapSession) notConnected() bool { return s.up.flag(s.up.notConnected, s.mailbox) }

func (s *imapSession) Select(name string, options *imap.SelectOptions) (*imap.SelectData, error) {
	if s.notConnected() {
		return nil, errNotConnected
	}
	return s.UserSession.Select(name, options)
}

func (s *imapSession) Status(name string, options *imap.StatusOptions) (*imap.StatusData, error) {
	if s.notConnected() {
		return nil, errNotConnected
	}
	return s.UserSession.Status(name, options)
}
