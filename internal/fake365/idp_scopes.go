package fake365

import (
	"net/http"
	"net/url"
	"slices"
	"strings"
)

// Scopes and resources: which resource a scope names, and the rule of one
// resource per token.

// Scopes that are about the sign-in, not a resource. Entra leaves them out
// of the "scope" it echoes for a non-Graph resource.
var idpOIDCScopes = []string{"openid", "profile", "email", "offline_access"}

// idpAudience is the resource of the first resource scope, as Entra derives
// aud (Graph for a bare permission name); Exchange Online when there is none.
func idpAudience(resource []string) string {
	if len(resource) == 0 {
		return OutlookResource
	}
	if u, err := url.Parse(resource[0]); err == nil && u.Scheme != "" && u.Host != "" {
		return u.Scheme + "://" + u.Host
	}
	return GraphResource
}

// idpResourceOf names the resource a scope belongs to: its URL's origin;
// Graph for a bare permission name, as Entra reads "Mail.Send". Exchange
// Online answers to two identifier URIs.
func idpResourceOf(scope string) string {
	u, err := url.Parse(scope)
	if err != nil || u.Scheme == "" || u.Host == "" {
		return GraphResource
	}
	origin := strings.ToLower(u.Scheme + "://" + u.Host)
	if origin == "https://outlook.office365.com" {
		return OutlookResource
	}
	return origin
}

// idpOneResource refuses a token request naming scopes of two resources.
func idpOneResource(scopes []string) *idpError {
	first := ""
	for _, s := range scopes {
		if idpHasScope(idpOIDCScopes, s) {
			continue
		}
		r := idpResourceOf(s)
		if first == "" {
			first = r
		} else if r != first {
			return idpErr(http.StatusBadRequest, "invalid_scope", 28000,
				"Provided value for the input parameter scope is not valid because it contains more than one resource. Scope %s is not valid.",
				strings.Join(scopes, " "))
		}
	}
	return nil
}

func idpHasScope(scopes []string, s string) bool {
	return slices.ContainsFunc(scopes, func(x string) bool { return strings.EqualFold(x, s) })
}

func idpDedupe(scopes []string) []string {
	var out []string
	for _, s := range scopes {
		if !idpHasScope(out, s) {
			out = append(out, s)
		}
	}
	return out
}
