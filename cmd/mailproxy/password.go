package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"mailproxy/auth"
	"os"
	"strings"

	"golang.org/x/term"
)

// terminalPassword returns a reader of passwords without echo when stdin is
// a terminal, else nil.
func terminalPassword() func(prompt string) (string, error) {
	fd := int(os.Stdin.Fd())
	if !term.IsTerminal(fd) {
		return nil
	}
	return func(prompt string) (string, error) {
		fmt.Fprint(os.Stderr, prompt)
		b, err := term.ReadPassword(fd)
		fmt.Fprintln(os.Stderr)
		return string(b), err
	}
}

// newPassword asks for a new password twice on a terminal, or reads one line
// from stdin when fromStdin is set or stdin is not a terminal.
func newPassword(env *cmdEnv, fromStdin bool, what string) (string, error) {
	if fromStdin || env.readPassword == nil {
		line, err := bufio.NewReader(env.stdin).ReadString('\n')
		if err != nil && !errors.Is(err, io.EOF) {
			return "", fmt.Errorf("read %s from stdin: %w", what, err)
		}
		pw := strings.TrimRight(line, "\r\n")
		if pw == "" {
			return "", fmt.Errorf("read %s from stdin: empty password", what)
		}
		if err := auth.CheckNewPassword(pw); err != nil {
			return "", fmt.Errorf("%s from stdin: %w", what, err)
		}
		return pw, nil
	}
	for {
		pw, err := env.readPassword(fmt.Sprintf("New %s: ", what))
		if err != nil {
			return "", fmt.Errorf("read %s: %w", what, err)
		}
		if err := auth.CheckNewPassword(pw); err != nil {
			fmt.Fprintf(env.stderr, "Not accepted: %v.\n", err)
			continue
		}
		again, err := env.readPassword(fmt.Sprintf("Repeat %s: ", what))
		if err != nil {
			return "", fmt.Errorf("read %s: %w", what, err)
		}
		if again != pw {
			fmt.Fprintln(env.stderr, "The passwords differ; try again.")
			continue
		}
		return pw, nil
	}
}

func runHashPassword(_ context.Context, env *cmdEnv, args []string) error {
	fs := newFlags(env, "hash-password")
	fs.Usage = func() {
		fmt.Fprintln(env.stderr, "usage: mailproxy hash-password\n\nAsks for a password (twice on a terminal, one line on stdin otherwise)\nand prints its Argon2id hash for password_hash in the config.")
	}
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return usagef("hash-password takes no arguments (the password is read from the terminal or stdin)")
	}
	pw, err := newPassword(env, false, "password")
	if err != nil {
		return err
	}
	h, err := auth.HashPassword(pw)
	if err != nil {
		return err
	}
	fmt.Fprintln(env.stdout, h)
	return nil
}
