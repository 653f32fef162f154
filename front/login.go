package front

import (
	"encoding/base64"
	"errors"
	"fmt"

	"mailproxy/auth"
)

// AsAuthError is err as an *auth.AuthError; an error that is not one is a
// temporary failure to check the login.
func AsAuthError(err error) *auth.AuthError {
	var ae *auth.AuthError
	if errors.As(err, &ae) {
		return ae
	}
	return &auth.AuthError{Kind: auth.AuthUnavailable, Msg: "temporary failure checking the login", Err: err}
}

// KindName is the kind attribute of a refused login's log line.
func KindName(k auth.AuthKind) string {
	switch k {
	case auth.AuthFailed:
		return "failed"
	case auth.AuthNeedsSignIn:
		return "needs sign-in"
	case auth.AuthUnavailable:
		return "unavailable"
	}
	return fmt.Sprint(int(k))
}

// DecodeSASL decodes a base64 SASL response; "=" and "" are the empty
// response.
func DecodeSASL(b []byte) ([]byte, error) {
	if len(b) == 0 || len(b) == 1 && b[0] == '=' {
		return []byte{}, nil
	}
	out := make([]byte, base64.StdEncoding.DecodedLen(len(b)))
	n, err := base64.StdEncoding.Decode(out, b)
	if err != nil {
		return nil, err
	}
	return out[:n], nil
}
