package agent_test

import (
	"context"
	"fmt"
	"log"
	"os"
	"path/filepath"

	"github.com/blockimage/blockimage/examples/linuxagent/internal/agent"
	"github.com/blockimage/blockimage/examples/linuxagent/internal/agentapi"
)

// Back up an image file (no root, tracer or freeze needed: nothing writes
// to it) to a local target image, then back it up again as a diff, which
// finds nothing to send.
func ExamplePlatform_Run() {
	dir, err := os.MkdirTemp("", "agent-example")
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(dir)
	src := filepath.Join(dir, "disk.img")
	data := make([]byte, 1<<20)
	copy(data[4096:], "not a filesystem, so every block is copied")
	if err := os.WriteFile(src, data, 0o600); err != nil {
		log.Fatal(err)
	}
	target := filepath.Join(dir, "backup.img")
	for _, mode := range []agentapi.Mode{agentapi.Full, agentapi.Diff} {
		res, err := agent.System.Run(context.Background(), agent.Backup{
			Request: agentapi.BackupRequest{Device: src, Target: target, Mode: mode},
		})
		if err != nil {
			log.Fatal(err)
		}
		fmt.Printf("%s: %d bytes in use, %d sent, consistent %v\n", res.Mode, res.BytesInUse, res.BytesSent, res.Consistent)
	}
	// Output:
	// full: 1048576 bytes in use, 1048576 sent, consistent true
	// diff: 1048576 bytes in use, 0 sent, consistent true
}
