//go:build !linux

package testenv

import "os"

func syncfs(f *os.File) error { return f.Sync() }
