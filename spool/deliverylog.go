package spool

import (
	"slices"
	"strings"
	"time"
)

// Record is one message in the delivery log, built from the journal: no
// body, only the envelope, the size and what happened when.
type Record struct {
	ID       string
	Device   string
	Account  string
	Mailbox  string
	From     string // MAIL FROM sent upstream
	OrigFrom string // MAIL FROM the device gave
	Rcpts    int
	Size     int64
	IsDSN    bool
	Received time.Time
	Attempts []Attempt
	DSNs     []DSNSent
	Retries  []time.Time // admin retries
	Done     time.Time   // zero while queued
	Result   string      // "" while queued, else a Result* constant
}

// Attempt is one delivery attempt.
type Attempt struct {
	Time                        time.Time
	Delivered, Failed, Deferred []string
	Reply                       string // the upstream's reply, verbatim
	Next                        time.Time
}

// DSNSent is a DSN the spool queued about a message.
type DSNSent struct {
	ID, To string
}

// State is "queued" or the result.
func (r *Record) State() string {
	if r.Result == "" {
		return "queued"
	}
	return r.Result
}

// Query selects delivery log records.
type Query struct {
	Account string // "" = every account; compared case-insensitively
	Mailbox string
	// Search matches a substring (case-insensitive) of the id, device,
	// senders, state or any reply.
	Search string
	Queued bool // only messages still in the queue
	Offset int
	Limit  int // 0 = 50
}

func (r *Record) matches(q Query) bool {
	if q.Account != "" && !strings.EqualFold(q.Account, r.Account) {
		return false
	}
	if q.Mailbox != "" && !strings.EqualFold(q.Mailbox, r.Mailbox) {
		return false
	}
	if q.Queued && r.Result != "" {
		return false
	}
	if q.Search == "" {
		return true
	}
	needle := strings.ToLower(q.Search)
	hay := []string{r.ID, r.Device, r.From, r.OrigFrom, r.State(), r.Account}
	for _, a := range r.Attempts {
		hay = append(hay, a.Reply)
	}
	for _, h := range hay {
		if strings.Contains(strings.ToLower(h), needle) {
			return true
		}
	}
	return false
}

// records reads the journal within the retention into records.
func (s *Spool) records() ([]*Record, error) {
	return ReadLog(s.store, s.o.Clock.Now().Add(-s.o.LogRetention))
}

// ReadLog builds the delivery log records of the messages received at or
// after since from a store's journal, oldest first.
func ReadLog(st Store, since time.Time) ([]*Record, error) {
	byID := map[string]*Record{}
	var order []*Record
	err := st.Events(since, func(ev Event) bool {
		r := byID[ev.ID]
		if r == nil {
			if ev.Kind != EvReceived {
				return true // its start is past the retention
			}
			r = &Record{ID: ev.ID}
			byID[ev.ID] = r
			order = append(order, r)
		}
		switch ev.Kind {
		case EvReceived:
			r.Device, r.Account, r.Mailbox = ev.Device, ev.Account, ev.Mailbox
			r.From, r.OrigFrom, r.Rcpts, r.Size = ev.From, ev.OrigFrom, ev.Rcpts, ev.Size
			r.IsDSN, r.Received = ev.IsDSN, ev.Time
		case EvAttempt:
			r.Attempts = append(r.Attempts, Attempt{Time: ev.Time, Delivered: ev.Delivered,
				Failed: ev.Failed, Deferred: ev.Deferred, Reply: ev.Reply, Next: ev.Next})
		case EvDSN:
			r.DSNs = append(r.DSNs, DSNSent{ID: ev.DSN, To: ev.DSNTo})
		case EvRetry:
			r.Retries = append(r.Retries, ev.Time)
		case EvDone:
			r.Done, r.Result = ev.Time, ev.Result
		}
		return true
	})
	return order, err
}

// List returns the records matching q, newest first, and how many match
// in all.
func (s *Spool) List(q Query) ([]*Record, int, error) {
	all, err := s.records()
	if err != nil {
		return nil, 0, err
	}
	out, total := Select(all, q)
	return out, total, nil
}

// Select returns the records of all (oldest first) that match q, newest
// first, and how many match in all.
func Select(all []*Record, q Query) ([]*Record, int) {
	if q.Limit <= 0 {
		q.Limit = 50
	}
	var out []*Record
	total := 0
	for i := len(all) - 1; i >= 0; i-- {
		if !all[i].matches(q) {
			continue
		}
		if total >= q.Offset && len(out) < q.Limit {
			out = append(out, all[i])
		}
		total++
	}
	return out, total
}

// Show returns one message's record.
func (s *Spool) Show(id string) (*Record, error) {
	all, err := s.records()
	if err != nil {
		return nil, err
	}
	i := slices.IndexFunc(all, func(r *Record) bool { return r.ID == id })
	if i < 0 {
		return nil, ErrNotFound
	}
	return all[i], nil
}
