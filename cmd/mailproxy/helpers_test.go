package main

type discardWriter struct{}

func (discardWriter) Write(p []byte) (int, error) { return len(p), nil }
