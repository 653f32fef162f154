package auth

import (
	"fmt"
	"unicode/utf8"
)

// MinPasswordLength is the shortest local password mailproxy accepts when
// one is set (mailproxy login, the admin page, hash-password), in
// characters. A delegated account's local password is the only thing
// between whoever can read the token file and the account's refresh token:
// the file is meant to withstand offline guessing, which Argon2id slows but
// a short password defeats.
const MinPasswordLength = 10

// CheckNewPassword says why a password someone is about to set is not good
// enough, or returns nil. The message is fit to show to that person.
func CheckNewPassword(pw string) error {
	if n := utf8.RuneCountInString(pw); n < MinPasswordLength {
		return fmt.Errorf("the password has %d characters; use at least %d: it alone protects the stored tokens (and so the mailbox) against anyone who can copy the token file and guess offline", n, MinPasswordLength)
	}
	return nil
}
