// Package fake365 is an in-process fake of Microsoft Entra ID and of Exchange
// Online's IMAP, SMTP and POP3 servers, used by tests, benchmarks and
// `mailproxy demo`.
//
// Everything listens on 127.0.0.1 with a port chosen by the kernel. Nothing
// here imports net/http/httptest, so the demo binary can link it.
package fake365
