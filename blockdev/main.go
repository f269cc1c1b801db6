package blockdev

import "github.com/blockimage/blockimage/internal/reexec"

// Main runs this package's child processes (the freeze watchdog a
// [Sequencer] starts) when the program was re-executed as one, and returns
// at once otherwise. Call it first in main, before anything else runs:
//
//	func main() {
//		blockdev.Main()
//		...
//	}
//
// A Sequencer in a program that does not call Main (or another package's
// Main, such as mtcp.Main: any of them serves every registered child)
// cannot start its watchdog and refuses to freeze.
func Main() { reexec.Init() }
