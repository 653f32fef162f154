package oauth

import (
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"

	"golang.org/x/oauth2"
)

// TokenError is a failed token request. It implements the NeedsSignIn,
// Temporary and Hint methods the proxy looks for. Its text never holds a
// token or a secret.
type TokenError struct {
	Code        string // OAuth error: invalid_grant, interaction_required...; "" when there was no answer
	AADSTS      int    // Entra error number, 0 if none
	Description string // first line of error_description (not secret, not in Error())
	Status      int    // HTTP status; 0 when there was no answer
	Err         error  // the underlying error
	// Endpoint names what answered, for Error(); "" means "token endpoint".
	Endpoint string
}

// Codes that mean the grant is gone and a person must sign in again.
var signInCodes = map[string]bool{
	"invalid_grant":         true,
	"interaction_required":  true,
	"login_required":        true,
	"consent_required":      true,
	"missing_refresh_token": true,
}

func (e *TokenError) Error() string {
	var b strings.Builder
	if e.Endpoint != "" {
		b.WriteString(e.Endpoint + ": ")
	} else {
		b.WriteString("token endpoint: ")
	}
	switch {
	case e.Code != "":
		b.WriteString(e.Code)
		if e.AADSTS != 0 {
			fmt.Fprintf(&b, " (AADSTS%d)", e.AADSTS)
		}
	case e.Status != 0:
		fmt.Fprintf(&b, "HTTP %d", e.Status)
	case e.Err != nil:
		b.WriteString(e.Err.Error())
	default:
		b.WriteString("failed")
	}
	return b.String()
}

func (e *TokenError) Unwrap() error { return e.Err }

// NeedsSignIn reports whether the account's sign-in is gone
// (invalid_grant, interaction_required...): refreshing again will not help.
func (e *TokenError) NeedsSignIn() bool { return signInCodes[e.Code] }

// Temporary reports whether the failure may go away by itself: the identity
// provider was unreachable, timed out, failed (5xx) or throttled (429).
func (e *TokenError) Temporary() bool {
	switch {
	case e.Code == "temporarily_unavailable" || e.Code == "server_error":
		return true
	case e.Status >= 500 || e.Status == 429:
		return true
	case e.Code == "" && e.Status == 0:
		return true // no answer at all: network, timeout, garbled response
	}
	return false
}

// Hint is one sentence telling the admin what to do.
func (e *TokenError) Hint() string {
	if h := HintFor(e.Code, e.AADSTS); h != "" {
		return h
	}
	if e.Temporary() {
		return "the identity provider is unreachable or failing; mailproxy keeps using the current access token while it is valid and retries (check DNS, firewall and proxy settings if this persists)"
	}
	return ""
}

// classify turns an error from x/oauth2 into a *TokenError.
func classify(err error) *TokenError {
	var te *TokenError
	if errors.As(err, &te) {
		return te
	}
	te = &TokenError{Err: err}
	var re *oauth2.RetrieveError
	if errors.As(err, &re) {
		te.Code = re.ErrorCode
		te.Description, te.AADSTS = parseDescription(re.ErrorDescription)
		if re.Response != nil {
			te.Status = re.Response.StatusCode
		}
		if te.AADSTS == 0 {
			var body struct {
				ErrorCodes []int `json:"error_codes"`
			}
			if json.Unmarshal(re.Body, &body) == nil && len(body.ErrorCodes) > 0 {
				te.AADSTS = body.ErrorCodes[0]
			}
		}
		// The body is not kept: Err is for the log, and RetrieveError's
		// text quotes the raw body when there is no error code.
		te.Err = fmt.Errorf("token endpoint answered HTTP %d", te.Status)
		if te.Code != "" {
			te.Err = fmt.Errorf("token endpoint answered HTTP %d %s", te.Status, te.Code)
		}
	}
	return te
}

// parseDescription keeps the first line of an Entra error_description
// ("AADSTS70008: The provided ... \r\nTrace ID: ...") and its AADSTS number.
func parseDescription(desc string) (string, int) {
	first, _, _ := strings.Cut(desc, "\n")
	first = strings.TrimSpace(first)
	rest, ok := strings.CutPrefix(first, "AADSTS")
	if !ok {
		return first, 0
	}
	n := 0
	for n < len(rest) && '0' <= rest[n] && rest[n] <= '9' {
		n++
	}
	code, err := strconv.Atoi(rest[:n])
	if err != nil {
		return first, 0
	}
	return first, code
}

const signInAgain = "run `mailproxy login <user>` (or Sign in on the admin page)"

var aadstsHints = map[int]string{
	70008:   "the sign-in expired or was revoked: " + signInAgain,
	700082:  "the refresh token expired after 90 days without use: " + signInAgain,
	50173:   "the sign-in was revoked (password change or an admin revoked sessions): " + signInAgain,
	70043:   "the refresh token expired because a Conditional Access sign-in frequency policy applies: " + signInAgain + ", or exclude the account from that policy",
	50076:   "multi-factor authentication or Conditional Access requires an interactive sign-in: " + signInAgain,
	50079:   "the user must register for multi-factor authentication: sign in once in a browser, then " + signInAgain,
	53003:   "a Conditional Access policy blocked the sign-in: check the sign-in logs in Entra ID and allow this app or location",
	65001:   "admin consent is missing: grant consent for the app's IMAP.AccessAsUser.All/SMTP.Send permissions in Entra ID (API permissions > Grant admin consent), then " + signInAgain,
	65004:   "the user declined to consent to the app: " + signInAgain + " and accept, or have an admin grant consent",
	7000215: "the client secret is wrong: check client_secret/client_secret_file (it must be the secret's Value, not its Secret ID)",
	7000222: "the client secret has expired: create a new one in Entra ID (Certificates & secrets) and update client_secret/client_secret_file",
	7000218: "the app registration is a confidential client: set client_secret/client_secret_file, or enable 'Allow public client flows' in Entra ID (Authentication)",
	50011:   "the redirect URI is not registered for the app: in Entra ID (App registrations > Authentication) add http://localhost:8025/oauth2/callback, or your redirect_url, under 'Mobile and desktop applications' (not 'Web'); the path must match, the port of http://localhost does not matter",
	7000112: "the application is disabled in Entra ID: enable it (Enterprise applications > Properties > Enabled for users to sign-in)",
	50105:   "the user is not assigned to the application: assign them in Entra ID (Enterprise applications > Users and groups) or turn off 'Assignment required'",
	700016:  "the application (client_id) was not found in the tenant: check client_id and tenant, and that the app is registered in that directory or consented to there",
	900144:  "the token request lacks a required parameter: check the provider's client_id, token_url and scopes",
	9002313: "the identity provider found the request malformed: check the provider's tenant, token_url and scopes, then " + signInAgain,
	70011:   "a requested scope is invalid: check the provider's scopes (client_credentials needs https://outlook.office365.com/.default)",
	1002012: "a requested scope is invalid: client_credentials needs a scope ending in /.default",
	50020:   "the user's account is not in this tenant: use the tenant the mailbox belongs to (or 'organizations')",
	50034:   "the user account does not exist in the tenant: check the username and tenant",
	50057:   "the user account is disabled in Entra ID: enable it, then " + signInAgain,
	50058:   "the identity provider could not find a signed-in session: " + signInAgain,
	700024:  "the client assertion is not valid: check the app's credentials",
	700025:  "the app registration is a public client: remove client_secret/client_secret_file from the provider, or register the app as a confidential (Web) client",
	70000:   "the grant was issued to another app or is malformed (did client_id change?): " + signInAgain,
	500112:  "the redirect URI differs from the one the sign-in started with: check redirect_url, then " + signInAgain,
	501481:  "the PKCE verifier did not match: start the sign-in again with `mailproxy login <user>`",
	54005:   "the authorization code was already used: start the sign-in again with `mailproxy login <user>`",
	70003:   "the identity provider does not support this grant type: check the provider type and token_url",
}

var codeHints = map[string]string{
	"invalid_grant":           "the sign-in is no longer valid: " + signInAgain,
	"interaction_required":    "the identity provider requires an interactive sign-in: " + signInAgain,
	"login_required":          "the identity provider requires an interactive sign-in: " + signInAgain,
	"consent_required":        "consent is missing for the app's permissions: grant consent in Entra ID, then " + signInAgain,
	"invalid_client":          "the identity provider rejected the app's credentials: check client_id and client_secret/client_secret_file",
	"unauthorized_client":     "the app is not allowed to use this grant: check the app registration (platform, 'Allow public client flows' for the device flow, API permissions)",
	"invalid_scope":           "a requested scope is invalid: check the provider's scopes",
	"invalid_request":         "the identity provider refused the request as malformed: check the provider's endpoints, client_id and scopes",
	"missing_refresh_token":   "no refresh token is stored for the account (was offline_access among the scopes?): " + signInAgain,
	"temporarily_unavailable": "the identity provider is temporarily unavailable; mailproxy retries on its own",
	"server_error":            "the identity provider failed; mailproxy retries on its own",
}

// HintFor returns one sentence telling the admin what to do about a token
// endpoint error, preferring the AADSTS number over the OAuth code, or ""
// when there is nothing specific to say.
func HintFor(code string, aadsts int) string {
	if h, ok := aadstsHints[aadsts]; ok {
		return h
	}
	return codeHints[code]
}

// ErrNoRefreshToken is a sign-in whose answer had no refresh token (the
// device flow in Security Defaults tenants): it would end with the access
// token, so the browser flow is offered instead.
var ErrNoRefreshToken = errors.New("the device code sign-in gave no refresh token (Security Defaults tenants do this), so it would end when the access token expires in about an hour")

// DeviceRefused says in plain words why the identity provider refused the
// device flow itself (not the person's answer), or "" when it did not. The
// browser (or paste-back) flow works where the device flow is blocked.
func DeviceRefused(err error) string {
	if errors.Is(err, ErrNoRefreshToken) {
		return ErrNoRefreshToken.Error()
	}
	var te *TokenError
	if !errors.As(err, &te) {
		return ""
	}
	switch te.AADSTS {
	case 53003, 53000, 53001, 53002, 50097, 530003:
		return fmt.Sprintf("a Conditional Access policy blocks it (AADSTS%d; Microsoft's managed policy \"Block device code flow\" switches itself on in tenants that have not used the flow)", te.AADSTS)
	case 7000218:
		return "the app registration does not allow public client flows (AADSTS7000218; Entra ID > App registrations > Authentication > Allow public client flows)"
	}
	if te.Code == "unauthorized_client" {
		return "the app registration may not use the device flow (unauthorized_client)"
	}
	return ""
}
