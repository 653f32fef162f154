package fake365

import (
	"sort"
	"strings"

	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapserver"
)

// Folder is one of the folders Exchange Online creates in every mailbox,
// with its RFC 6154 special-use attribute.
type Folder struct {
	Name string
	Use  imap.MailboxAttr
}

// StandardFolders are the folders every fake mailbox has besides INBOX,
// named as Exchange Online names them (English mailbox locale). Clients set
// up per docs/CLIENTS.md (NeoMutt's record "+Sent Items", postponed
// "+Drafts") find them.
var StandardFolders = []Folder{
	{"Archive", imap.MailboxAttrArchive},
	{"Deleted Items", imap.MailboxAttrTrash},
	{"Drafts", imap.MailboxAttrDrafts},
	{"Junk Email", imap.MailboxAttrJunk},
	{"Sent Items", imap.MailboxAttrSent},
}

func specialUse(name string) imap.MailboxAttr {
	for _, f := range StandardFolders {
		if f.Name == name {
			return f.Use
		}
	}
	return ""
}

// imapmemserver keeps special-use attributes to itself and cannot list its
// folder names, so the fake keeps the names of each mailbox's folders
// (u.folders, under u.mu) and answers LIST from them, with the attributes
// in plain LIST as Exchange does. LSUB and LIST-STATUS go to imapmemserver.

func (u *IMAPUpstream) addFolderLocked(key, name string) {
	if u.folders[key] == nil {
		u.folders[key] = make(map[string]struct{})
	}
	u.folders[key][name] = struct{}{}
}

func (u *IMAPUpstream) folderChanged(mailbox, removed, added string) {
	key := strings.ToLower(mailbox)
	u.mu.Lock()
	defer u.mu.Unlock()
	if removed != "" {
		delete(u.folders[key], removed)
	}
	if added != "" {
		u.addFolderLocked(key, added)
	}
}

func (u *IMAPUpstream) folderNames(mailbox string) []string {
	key := strings.ToLower(mailbox)
	u.mu.Lock()
	defer u.mu.Unlock()
	names := make([]string, 0, len(u.folders[key]))
	for n := range u.folders[key] {
		names = append(names, n)
	}
	// INBOX first, as Exchange and Dovecot list it; the rest sorted.
	sort.Slice(names, func(i, j int) bool {
		if (names[i] == "INBOX") != (names[j] == "INBOX") {
			return names[i] == "INBOX"
		}
		return names[i] < names[j]
	})
	return names
}

func (s *imapSession) Create(name string, options *imap.CreateOptions) error {
	if err := s.UserSession.Create(name, options); err != nil {
		return err
	}
	s.up.folderChanged(s.mailbox, "", strings.TrimRight(name, "/"))
	return nil
}

func (s *imapSession) Delete(name string) error {
	if err := s.UserSession.Delete(name); err != nil {
		return err
	}
	s.up.folderChanged(s.mailbox, name, "")
	return nil
}

func (s *imapSession) Rename(oldName, newName string, options *imap.RenameOptions) error {
	if err := s.UserSession.Rename(oldName, newName, options); err != nil {
		return err
	}
	s.up.folderChanged(s.mailbox, oldName, strings.TrimRight(newName, "/"))
	return nil
}

func (s *imapSession) List(w *imapserver.ListWriter, ref string, patterns []string, options *imap.ListOptions) error {
	if s.notConnected() {
		return errNotConnected
	}
	if len(patterns) == 0 || options.SelectSubscribed || options.ReturnStatus != nil {
		return s.UserSession.List(w, ref, patterns, options)
	}
	for _, name := range s.up.folderNames(s.mailbox) {
		match := false
		for _, p := range patterns {
			match = match || imapserver.MatchList(name, '/', ref, p)
		}
		use := specialUse(name)
		if !match || (options.SelectSpecialUse && use == "") {
			continue
		}
		data := &imap.ListData{Mailbox: name, Delim: '/'}
		if use != "" {
			data.Attrs = []imap.MailboxAttr{use}
		}
		if err := w.WriteList(data); err != nil {
			return err
		}
	}
	return nil
}
