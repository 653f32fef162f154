package front

import (
	"bytes"
	"errors"
	"fmt"
	"strings"

	"github.com/emersion/go-sasl"
)

// The LOGIN mechanism's challenges, as every client expects them.
var (
	loginUsernameChallenge = []byte("Username:")
	loginPasswordChallenge = []byte("Password:")
)

// loginServer is the server side of the obsolete but ubiquitous SASL LOGIN
// mechanism (draft-murchison-sasl-login): ask for the username, then the
// password. go-sasl only has the client side.
type loginServer struct {
	check    func(username, password string) error
	step     int // 0: nothing received, 1: waiting for the username, 2: waiting for the password, 3: done
	username string
}

// NewLoginServer returns a SASL LOGIN server. Without an initial response it
// challenges "Username:" and then "Password:"; an initial response is the
// username, so it goes straight to "Password:". A zero-length initial
// response counts as none, since an empty username cannot log in anyway. When
// both are in, it calls check and returns check's error.
func NewLoginServer(check func(username, password string) error) sasl.Server {
	return &loginServer{check: check}
}

func (s *loginServer) Next(response []byte) (challenge []byte, done bool, err error) {
	switch s.step {
	case 0:
		if len(response) == 0 {
			s.step = 1
			return loginUsernameChallenge, false, nil
		}
		s.username = string(response)
		s.step = 2
		return loginPasswordChallenge, false, nil
	case 1:
		s.username = string(response)
		s.step = 2
		return loginPasswordChallenge, false, nil
	case 2:
		s.step = 3
		return nil, true, s.check(s.username, string(response))
	default:
		return nil, true, sasl.ErrUnexpectedClientResponse
	}
}

// Errors from ParsePlain. They never quote the response, which holds a
// password.
var (
	errPlainFields   = errors.New("sasl PLAIN: response must have 3 NUL-separated fields")
	errPlainIdentity = errors.New("sasl PLAIN: authorization identity must be empty or equal the username")
)

// ParsePlain splits a SASL PLAIN response (RFC 4616)
// identity NUL username NUL password. The authorization identity must be
// empty or equal the username (compared case-insensitively, like account
// names): acting as another user is not supported.
func ParsePlain(resp []byte) (identity, username, password string, err error) {
	if n := bytes.Count(resp, []byte{0}); n != 2 {
		return "", "", "", fmt.Errorf("%w, got %d", errPlainFields, n+1)
	}
	i := bytes.IndexByte(resp, 0)
	j := i + 1 + bytes.IndexByte(resp[i+1:], 0)
	identity, username, password = string(resp[:i]), string(resp[i+1:j]), string(resp[j+1:])
	if !IdentityAllowed(identity, username) {
		return "", "", "", errPlainIdentity
	}
	return identity, username, password, nil
}

// IdentityAllowed is the rule for a SASL PLAIN authorization identity: it
// must be empty or equal the username (compared case-insensitively, like
// account names); acting as another user is not supported.
func IdentityAllowed(identity, username string) bool {
	return identity == "" || strings.EqualFold(identity, username)
}

// NewSASLServer returns the server side of mech ("PLAIN" or "LOGIN", upper
// case), which hands the username and password to set once it has both;
// nil for another mechanism. PLAIN without an initial response challenges
// with an empty line. When Next fails for an authorization identity that
// is not the username, IdentityRefused reports true for its error.
func NewSASLServer(mech string, set func(username, password string)) sasl.Server {
	switch mech {
	case "PLAIN":
		return plainServer(func(resp []byte) ([]byte, bool, error) {
			if resp == nil {
				return []byte{}, false, nil // empty challenge: "+ "
			}
			_, u, pw, err := ParsePlain(resp)
			if err != nil {
				return nil, true, err
			}
			set(u, pw)
			return nil, true, nil
		})
	case "LOGIN":
		return NewLoginServer(func(username, password string) error {
			set(username, password)
			return nil
		})
	}
	return nil
}

// IdentityRefused reports whether err is ParsePlain's (or a PLAIN
// server's) refusal of an authorization identity that is not the username.
func IdentityRefused(err error) bool { return errors.Is(err, errPlainIdentity) }

// plainServer is a sasl.Server made of its Next method.
type plainServer func(response []byte) (challenge []byte, done bool, err error)

func (f plainServer) Next(response []byte) ([]byte, bool, error) { return f(response) }
