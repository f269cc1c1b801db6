package main

import "github.com/blockimage/blockimage/blockdev"

// platformMain runs the library's child processes (the freeze watchdog)
// when this process is one, and returns otherwise.
func platformMain() { blockdev.Main() }
