package reexec

import (
	"os"
	"strings"
	"testing"
)

func init() {
	Register("reexec-test-echo", func() {
		os.Stdout.WriteString("child:" + strings.Join(os.Args[1:], ",") + ":" + os.Getenv(envName))
	})
}

func TestMain(m *testing.M) {
	if Init() {
		return
	}
	os.Exit(m.Run())
}

func TestChildRunsRegisteredFunction(t *testing.T) {
	cmd, err := Command("reexec-test-echo", "a", "b")
	if err != nil {
		t.Fatal(err)
	}
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("child: %v", err)
	}
	// The child sees its arguments and no longer sees the marker.
	if got := string(out); got != "child:a,b:" {
		t.Fatalf("child printed %q, want %q", got, "child:a,b:")
	}
}

func TestUnknownChildExitsWithStatus2(t *testing.T) {
	cmd, err := Command("reexec-test-nobody")
	if err != nil {
		t.Fatal(err)
	}
	out, err := cmd.CombinedOutput()
	if cmd.ProcessState == nil || cmd.ProcessState.ExitCode() != 2 || !strings.Contains(string(out), "reexec-test-nobody") {
		t.Fatalf("unknown child: err %v, output %q; want exit 2 naming the child", err, out)
	}
}

func TestRegisterTwicePanics(t *testing.T) {
	defer func() {
		if recover() == nil {
			t.Fatal("second Register did not panic")
		}
	}()
	Register("reexec-test-echo", func() {})
}
