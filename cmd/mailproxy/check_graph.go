package main

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/emersion/go-smtp"

	"mailproxy/daemon"
	"mailproxy/internal/cmdline"
	"mailproxy/oauth"
)

// graph checks an account that sends through Microsoft Graph (send_via =
// "graph"): it gets the account's Graph token and, with sendTo, sends the
// test message through Graph as serve would. Graph has no way to ask
// whether the app may send short of sending.
func (a *accountCheck) graph(ctx context.Context, sendTo string) {
	p := a.acct.Provider
	what := fmt.Sprintf("graph token for %s from %s", a.acct.Username, hostOf(p.TokenURL))
	gt, ok := a.tokens.(interface{ Graph() *oauth.Source })
	if !ok {
		a.fail(what, "", fix{cause: "the account's token source gives no Graph tokens"})
		return
	}
	a.c.progress("Asking %s for %s's Microsoft Graph token", hostOf(p.TokenURL), a.acct.Username)
	err := checkTimed(ctx, func(ctx context.Context) error {
		_, err := gt.Graph().Token(ctx)
		return err
	})
	if err != nil {
		a.fail(what, err.Error(), a.graphTokenFix(err))
		return
	}
	a.c.report(what, "issued", nil)
	what = fmt.Sprintf("graph %s: send as %s", p.GraphURL, a.mailbox)
	if sendTo == "" {
		a.c.report(what, "not tried: Graph tells whether the app may send only when it sends (-send-to ADDR sends a test message through Graph)", nil)
		return
	}
	what = fmt.Sprintf("graph %s: test message from %s to %s", p.GraphURL, a.mailbox, sendTo)
	a.c.progress("Sending a test message to %s through Microsoft Graph", sendTo)
	var reply string
	err = checkTimed(ctx, func(ctx context.Context) error {
		sess, err := daemon.NewGraphSession(ctx, a.acct, a.tokens, discardLogger())
		if err != nil {
			return err
		}
		defer sess.Close()
		reply, err = daemon.SendTestMessage(sess, a.mailbox, sendTo, time.Now())
		return err
	})
	var se *smtp.SMTPError
	switch {
	case errors.As(err, &se):
		a.fail(what, smtpReply(se), a.graphFix(se))
	case err != nil:
		a.fail(what, "", fix{cause: err.Error()})
	default:
		a.c.report(what, "sent; Graph said: 250 "+reply, nil)
	}
}

// graphTokenFix explains a Graph token that could not be had.
func (a *accountCheck) graphTokenFix(err error) fix {
	f := fix{todo: hintOf(err)}
	var te *oauth.TokenError
	if errors.As(err, &te) && strings.Contains(te.Description, "AADSTS65001") {
		f.cause = "the Microsoft Graph permissions (Mail.Send, Mail.ReadWrite) were never consented for this sign-in"
		f.todo = "add them to the app (API permissions > Microsoft Graph > Delegated), grant admin consent, then sign in once more: " + cmdline.Login(a.acct.Username)
	}
	if f.todo == "" {
		f.todo = "see the error above; docs/GRAPH.md lists the permissions"
	}
	return f
}

// graphFix explains a refusal of the test message by Graph, from the SMTP
// reply mailproxy makes of Graph's answer (docs/GRAPH.md, "Replies").
func (a *accountCheck) graphFix(se *smtp.SMTPError) fix {
	ec := se.EnhancedCode
	code := fmt.Sprintf("%d.%d.%d", ec[0], ec[1], ec[2])
	clientID := a.acct.Provider.ClientID
	switch code {
	case "5.7.60":
		return fix{cause: whoFor(a) + " may not send as " + a.mailbox + " through Graph",
			todo: "Add-RecipientPermission -Identity " + a.mailbox + " -Trustee " + principalFor(a) + " -AccessRights SendAs -Confirm:$false\n" +
				"(it takes up to an hour to apply)"}
	case "5.7.1":
		if a.appOnly {
			return fix{cause: "the app (client_id " + clientID + ") has no Graph Mail.Send for " + a.mailbox,
				todo: "give it the mailbox with RBAC for Applications (Exchange Online PowerShell):\n" +
					"New-ManagementRoleAssignment -App " + clientID + " -Role \"Application Mail.Send\" -CustomResourceScope \"<scope holding " + a.mailbox + ">\"\n" +
					"(and \"Application Mail.ReadWrite\" for messages sent as a draft), or the application permission Mail.Send with admin consent;\n" +
					"Test-ServicePrincipalAuthorization -Identity " + clientID + " -Resource " + a.mailbox + " shows what the app may do"}
		}
		perm := "Mail.Send and Mail.ReadWrite"
		if !strings.EqualFold(a.identity, a.mailbox) {
			perm = "Mail.Send.Shared and Mail.ReadWrite.Shared (" + a.identity + " needs Send As and Full Access on " + a.mailbox + ")"
		}
		return fix{cause: "the Graph token of " + a.identity + " lacks the permission to send from " + a.mailbox,
			todo: "give the app the delegated Microsoft Graph permissions " + perm + " with consent, then sign in again: " + cmdline.Login(a.acct.Username)}
	case "5.7.3":
		return fix{cause: "Graph refused the token twice (after a refresh): its Graph permissions are not consented, or the token is not for Graph",
			todo: "grant admin consent for the app's Microsoft Graph permissions (docs/GRAPH.md, Permissions); for a delegated account sign in again: " + cmdline.Login(a.acct.Username)}
	case "5.7.8":
		return fix{cause: "no Graph token: the account needs a new sign-in", todo: cmdline.Login(a.acct.Username)}
	case "5.1.8":
		return fix{cause: "Graph does not know the mailbox " + a.mailbox,
			todo: "check account.mailbox; the mailbox needs an Exchange Online licence"}
	case "4.4.1":
		return fix{cause: "Microsoft Graph did not answer",
			todo: "check that " + a.acct.Provider.GraphURL + " is reachable from this machine (DNS, firewall, HTTP/TLS inspection: provider.ca_file)"}
	}
	return fix{cause: "Graph refused the message", todo: "docs/TROUBLESHOOTING.md (Microsoft Graph) explains Graph's answers"}
}
