// Package shape holds no code: its test checks the shape of the tree that
// docs/ARCHITECTURE.md promises (file sizes, function complexity, which
// package may import which), so that a change that breaks it fails CI.
package shape
