package admin

import (
	"fmt"
	"sort"
	"strings"
	"time"

	"mailproxy/oauth"
)

const (
	// RefreshTokenLifetime is how long an Entra refresh token lives without
	// being used. Every refresh rotates it and starts the time again, so
	// only an account nobody logs in with gets near the end.
	RefreshTokenLifetime = 90 * 24 * time.Hour
	// RenewalMargin is how long before the refresh token's end the alerts
	// start.
	RenewalMargin = 14 * 24 * time.Hour
)

// FlowClientCredentials is the flow of app-only accounts, which have no
// sign-in to lose (config.FlowClientCredentials).
const FlowClientCredentials = "client_credentials"

// AlertKind says what an Alert is about.
type AlertKind int

const (
	// AlertNeedsSignIn: the account is not signed in, or its sign-in is
	// gone (invalid_grant, interaction_required): mail stops until an
	// admin signs it in.
	AlertNeedsSignIn AlertKind = iota + 1
	// AlertRefreshExpiring: the refresh token is within RenewalMargin of
	// its end (or past it).
	AlertRefreshExpiring
	// AlertMailboxPaused: the upstream refused a mailbox (5.2.25x, 5.7.60,
	// 5.7.139, 535) and its spool stopped until an admin resumes it.
	AlertMailboxPaused
	// AlertLoginBlocked: the lockout refuses a username (or every
	// username) from an address until the block ends or is cleared.
	AlertLoginBlocked
)

func (k AlertKind) String() string {
	switch k {
	case AlertNeedsSignIn:
		return "needs-sign-in"
	case AlertRefreshExpiring:
		return "refresh-token-expiring"
	case AlertMailboxPaused:
		return "mailbox-paused"
	case AlertLoginBlocked:
		return "login-blocked"
	}
	return fmt.Sprintf("AlertKind(%d)", int(k))
}

// Alert is something an admin must act on before (or because) mail stops
// for an account. Its text holds no secret; it is for the admin page,
// `mailproxy status` and the log.
type Alert struct {
	Username string
	Kind     AlertKind
	// Deadline is when the refresh token ends (AlertRefreshExpiring); zero
	// for AlertNeedsSignIn.
	Deadline time.Time
	// Message is one sentence naming the account and what to do.
	Message string
}

// RenewalDeadline returns when the refresh token obtained at obtained ends.
func RenewalDeadline(obtained time.Time) time.Time { return obtained.Add(RefreshTokenLifetime) }

// RenewalIn returns the time left at now until the refresh token obtained at
// obtained is RenewalMargin from its end: negative when the alert is due.
func RenewalIn(obtained, now time.Time) time.Duration {
	return RenewalDeadline(obtained).Add(-RenewalMargin).Sub(now)
}

// Alerts returns the alerts for statuses at now, accounts needing a sign-in
// first, then those whose refresh token ends soonest. App-only accounts
// (Flow client_credentials) never alert.
func Alerts(statuses []oauth.AccountStatus, now time.Time) []Alert {
	var signIn, expiring []Alert
	for _, st := range statuses {
		if st.Flow == FlowClientCredentials {
			continue
		}
		switch {
		case !st.SignedIn || st.NeedsSignIn:
			msg := fmt.Sprintf("%s needs a sign-in by an admin; until then its mail clients cannot log in", st.Username)
			if st.SignedIn {
				msg = fmt.Sprintf("%s needs a new sign-in by an admin; its mail clients cannot log in", st.Username)
			}
			if h := strings.TrimSpace(st.Hint); h != "" {
				msg += ": " + h
			} else if st.LastError != "" {
				msg += " (" + st.LastError + ")"
			}
			signIn = append(signIn, Alert{Username: st.Username, Kind: AlertNeedsSignIn, Message: msg})
		case !st.RefreshObtained.IsZero() && RenewalIn(st.RefreshObtained, now) <= 0:
			end := RenewalDeadline(st.RefreshObtained)
			var when string
			if left := end.Sub(now); left > 0 {
				when = fmt.Sprintf("ends in %s (%s)", roundDays(left), end.UTC().Format("2006-01-02 15:04 MST"))
			} else {
				when = fmt.Sprintf("ended %s ago (%s)", roundDays(-left), end.UTC().Format("2006-01-02 15:04 MST"))
			}
			msg := fmt.Sprintf("the sign-in of %s %s because the account was not used for %d days: log in once with a mail client, or sign it in again",
				st.Username, when, int((now.Sub(st.RefreshObtained))/(24*time.Hour)))
			expiring = append(expiring, Alert{Username: st.Username, Kind: AlertRefreshExpiring, Deadline: end, Message: msg})
		}
	}
	sort.SliceStable(signIn, func(i, j int) bool { return signIn[i].Username < signIn[j].Username })
	sort.SliceStable(expiring, func(i, j int) bool { return expiring[i].Deadline.Before(expiring[j].Deadline) })
	return append(signIn, expiring...)
}

// roundDays says a duration in days, or hours when under two days.
func roundDays(d time.Duration) string {
	if d < 48*time.Hour {
		h := int(d.Round(time.Hour) / time.Hour)
		if h == 1 {
			return "1 hour"
		}
		return fmt.Sprintf("%d hours", h)
	}
	return fmt.Sprintf("%d days", int(d/(24*time.Hour)))
}
