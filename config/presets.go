package config

import "strings"

// preset is what a provider type fills in. URLs may hold "{tenant}".
type preset struct {
	tenant                     string
	authURL, tokenURL, devURL  string
	scopes, appScopes          []string
	imapServer, smtpServer     string
	pop3Server                 string
	deviceFlow, appOnlyAllowed bool // may accounts use FlowDevice, FlowClientCredentials
}

const msIdentity = "https://login.microsoftonline.com/{tenant}/oauth2/v2.0/"

var (
	msScopes = []string{
		"https://outlook.office.com/IMAP.AccessAsUser.All",
		"https://outlook.office.com/SMTP.Send",
		"https://outlook.office.com/POP.AccessAsUser.All",
		"offline_access", // without it there is no refresh token
		"openid",         // id_token: who signed in (the delegate of a shared mailbox)
	}
	// App-only: IMAP.AccessAsApp, POP.AccessAsApp and SMTP.SendAsApp
	// granted to the app.
	msAppScopes = []string{"https://outlook.office365.com/.default"}
)

var presets = map[string]preset{
	TypeOffice365: microsoftPreset("organizations", "smtp.office365.com:587"),
	TypeOutlook:   microsoftPreset("consumers", "smtp-mail.outlook.com:587"),
	TypeGmail: {
		authURL:    "https://accounts.google.com/o/oauth2/v2/auth",
		tokenURL:   "https://oauth2.googleapis.com/token",
		devURL:     "https://oauth2.googleapis.com/device/code",
		scopes:     []string{"https://mail.google.com/", "openid", "email"},
		imapServer: "imap.gmail.com:993",
		smtpServer: "smtp.gmail.com:587",
		pop3Server: "pop.gmail.com:995",
		// Google's device flow does not grant https://mail.google.com/, and
		// Gmail has no app-only access to mailboxes.
		deviceFlow:     false,
		appOnlyAllowed: false,
	},
	TypeCustom: {deviceFlow: true, appOnlyAllowed: true},
}

// microsoftPreset is the preset of a type that signs in at the Microsoft
// identity platform: tenant is its default tenant; only the SMTP host
// differs between them.
func microsoftPreset(tenant, smtpServer string) preset {
	return preset{
		tenant:         tenant,
		authURL:        msIdentity + "authorize",
		tokenURL:       msIdentity + "token",
		devURL:         msIdentity + "devicecode",
		scopes:         msScopes,
		appScopes:      msAppScopes,
		imapServer:     "outlook.office365.com:993",
		smtpServer:     smtpServer,
		pop3Server:     "outlook.office365.com:995",
		deviceFlow:     true,
		appOnlyAllowed: true,
	}
}

func withTenant(url, tenant string) string {
	return strings.ReplaceAll(url, "{tenant}", tenant)
}
