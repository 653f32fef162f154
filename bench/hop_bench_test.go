package main

import (
	"crypto/aes"
	"crypto/cipher"
	"fmt"
	"io"
	"net"
	"testing"
)

// BenchmarkLoopbackHop measures one loopback TCP hop, both ends in this
// process: what a proxy adds next to a direct connection besides its own
// work. cpu-s/GB is the CPU time of the process (writer and reader) per GB.
func BenchmarkLoopbackHop(b *testing.B) {
	for _, size := range []int{16 << 10, 32 << 10} {
		b.Run(fmt.Sprintf("write-%dKiB", size>>10), func(b *testing.B) {
			ln, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				b.Fatalf("Listen() = %v", err)
			}
			defer ln.Close()
			done := make(chan error, 1)
			go func() {
				c, err := ln.Accept()
				if err != nil {
					done <- err
					return
				}
				defer c.Close()
				// As the bench's IMAP client reads: 64 KiB at a time.
				_, err = io.CopyBuffer(io.Discard, struct{ io.Reader }{c}, make([]byte, 64<<10))
				done <- err
			}()
			w, err := net.Dial("tcp", ln.Addr().String())
			if err != nil {
				b.Fatalf("Dial() = %v", err)
			}
			buf := make([]byte, size)
			b.SetBytes(int64(size))
			b.ReportAllocs()
			n := 0
			cpu0 := selfCPU()
			for b.Loop() {
				if _, err := w.Write(buf); err != nil {
					b.Fatalf("Write() = %v", err)
				}
				n++
			}
			w.Close()
			if err := <-done; err != nil {
				b.Fatalf("reader: %v", err)
			}
			cpu := selfCPU() - cpu0
			b.ReportMetric(cpu.Seconds()/(float64(n*size)/1e9), "cpu-s/GB")
		})
	}
}

// BenchmarkAESGCMOpen measures the decryption a proxy that terminates the
// upstream's TLS must do per byte at the least: AES-128-GCM open of
// records of 2, 4 and 16 KiB, as TLS 1.3 uses it. With
// BenchmarkLoopbackHop it gives the floor of docs/BENCHMARKS.md.
func BenchmarkAESGCMOpen(b *testing.B) {
	for _, size := range []int{2 << 10, 4 << 10, 16 << 10} {
		b.Run(fmt.Sprintf("record-%dKiB", size>>10), func(b *testing.B) {
			block, err := aes.NewCipher(make([]byte, 16))
			if err != nil {
				b.Fatal(err)
			}
			aead, err := cipher.NewGCM(block)
			if err != nil {
				b.Fatal(err)
			}
			nonce := make([]byte, aead.NonceSize())
			sealed := aead.Seal(nil, nonce, make([]byte, size), nil)
			out := make([]byte, 0, size)
			b.SetBytes(int64(size))
			b.ReportAllocs()
			n := 0
			cpu0 := selfCPU()
			for b.Loop() {
				if _, err := aead.Open(out[:0], nonce, sealed, nil); err != nil {
					b.Fatalf("Open() = %v", err)
				}
				n++
			}
			cpu := selfCPU() - cpu0
			b.ReportMetric(cpu.Seconds()/(float64(n*size)/1e9), "cpu-s/GB")
		})
	}
}
