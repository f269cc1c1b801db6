package main

import "github.com/blockimage/blockimage/internal/reexec"

// platformMain runs a child process of the library (the freeze watchdog)
// when this process is one, and returns otherwise.
func platformMain() { reexec.Init() }
