package dovecot_test

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
)

// http2Form posts a token request and returns the access token.
func http2Form(u string, fields map[string]string) (string, error) {
	form := url.Values{}
	for k, v := range fields {
		form.Set(k, v)
	}
	resp, err := http.PostForm(u, form)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	var ans struct {
		AccessToken string `json:"access_token"`
		Error       string `json:"error_description"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&ans); err != nil {
		return "", err
	}
	if ans.AccessToken == "" {
		return "", fmt.Errorf("no access token: %s", ans.Error)
	}
	return ans.AccessToken, nil
}
