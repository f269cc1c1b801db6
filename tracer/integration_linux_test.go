package tracer

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/maphash"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/blockimage/blockimage/internal/testenv"
)

func TestMain(m *testing.M) { testenv.Main(m) }

func requireTracing(t *testing.T) {
	t.Helper()
	testenv.Require(t, testenv.Root, testenv.LoopDevices, testenv.Commands("fio", "fsfreeze", "fstrim", "dd", "losetup", "partx"))
	// One blk tracer per machine: serialise with every other package's
	// ftrace tests.
	testenv.Exclusive(t, "ftrace")
}

// tracefsDir returns where tracefs is mounted, mounting it if needed.
func tracefsDir(t *testing.T) string {
	t.Helper()
	dir, err := findTracefs()
	if err != nil {
		t.Fatal(err)
	}
	return dir
}

// setForTest writes value to the settings file path and puts the value
// it held back when the test ends (after the cleanups registered later,
// such as a Tracer's Stop).
func setForTest(t *testing.T, path, value string) {
	t.Helper()
	old, err := readSysString(path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := writeFile(path, old); err != nil {
			t.Errorf("restoring %s to %s: %v", path, old, err)
		}
	})
	if err := writeFile(path, value); err != nil {
		t.Fatal(err)
	}
}

func startTracer(t *testing.T, dev string, o Options) *Tracer {
	t.Helper()
	tr, err := Start(context.Background(), dev, o)
	if err != nil {
		t.Fatalf("Start(%s): %v", dev, err)
	}
	t.Cleanup(func() {
		if err := tr.Stop(); err != nil {
			t.Errorf("Stop: %v", err)
		}
	})
	return tr
}

func run(t *testing.T, name string, args ...string) {
	t.Helper()
	if out, err := exec.Command(name, args...).CombinedOutput(); err != nil {
		t.Fatalf("%s %s: %v: %s", name, strings.Join(args, " "), err, out)
	}
}

func flushBuffers(t *testing.T, dev string) {
	t.Helper()
	f, err := os.Open(dev)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := unix.IoctlSetInt(int(f.Fd()), unix.BLKFLSBUF, 0); err != nil {
		t.Fatalf("BLKFLSBUF %s: %v", dev, err)
	}
}

var blockSeed = maphash.MakeSeed()

// blockHashes hashes every block of the image region [off, off+size).
func blockHashes(t *testing.T, image string, off, size int64, bs int) []uint64 {
	t.Helper()
	f, err := os.Open(image)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	r := io.NewSectionReader(f, off, size)
	buf := make([]byte, 1<<20)
	var out []uint64
	for {
		n, err := io.ReadFull(r, buf)
		for i := 0; i < n; i += bs {
			out = append(out, maphash.Bytes(blockSeed, buf[i:min(i+bs, n)]))
		}
		if err == io.EOF || err == io.ErrUnexpectedEOF {
			return out
		}
		if err != nil {
			t.Fatal(err)
		}
	}
}

// workload writes to the filesystem at mp the ways a real one is written:
// buffered writes with fsync, in-place overwrites, O_DIRECT random writes
// with fio, deletes (discarded by the mount option or fstrim), and large
// sequential writes.
func workload(t *testing.T, mp string, round int) {
	t.Helper()
	rng := rand.New(rand.NewPCG(uint64(round), 42))
	data := make([]byte, 512<<10)
	for i := range data {
		data[i] = byte(rng.Uint32())
	}
	for i := 0; i < 4; i++ {
		p := filepath.Join(mp, fmt.Sprintf("buf-%d-%d", round, i))
		f, err := os.Create(p)
		if err != nil {
			t.Fatal(err)
		}
		n := 1 + rng.IntN(len(data)-1)
		if _, err := f.Write(data[:n]); err != nil {
			t.Fatal(err)
		}
		if err := f.Sync(); err != nil {
			t.Fatal(err)
		}
		f.Close()
	}
	if round > 0 {
		// In-place overwrite of an older file, a few bytes at a time.
		p := filepath.Join(mp, fmt.Sprintf("buf-%d-0", round-1))
		f, err := os.OpenFile(p, os.O_RDWR, 0)
		if err != nil {
			t.Fatal(err)
		}
		st, _ := f.Stat()
		for i := 0; i < 16 && st.Size() > 1; i++ {
			if _, err := f.WriteAt(data[i:i+7], rng.Int64N(st.Size())); err != nil {
				t.Fatal(err)
			}
		}
		f.Sync()
		f.Close()
	}
	run(t, "fio", "--name=rand", "--filename="+filepath.Join(mp, "fio.dat"), "--size=16M",
		"--rw=randwrite", "--bs=4k", "--direct=1", "--ioengine=psync", "--io_size=1M",
		fmt.Sprintf("--randseed=%d", round+1), "--output=/dev/null")
	if round >= 2 {
		for i := 0; i < 4; i++ {
			os.Remove(filepath.Join(mp, fmt.Sprintf("buf-%d-%d", round-2, i)))
		}
		os.Remove(filepath.Join(mp, fmt.Sprintf("big-%d", round-2)))
	}
	run(t, "dd", "if=/dev/urandom", "of="+filepath.Join(mp, fmt.Sprintf("big-%d", round)), "bs=1M", "count=6", "conv=fsync", "status=none")
	if round%3 == 2 {
		run(t, "sync", "-f", mp)
		run(t, "fstrim", mp)
	}
}

// traceRounds runs the acceptance loop: trace dev while the workload runs,
// then freeze, BLKFLSBUF, Cut (the flush barrier), and compare the raw image
// region [off, off+size) with the previous round's block by block: every
// changed block must be pending in the cut epoch. It returns the blocks
// changed and traced over all rounds.
func traceRounds(t *testing.T, dev, mp, image string, off, size int64, rounds int) (changedTotal, tracedTotal int64) {
	ctx := context.Background()
	const bs = 4096
	tr := startTracer(t, dev, Options{BlockSize: bs, BufferSizeKB: 4096})
	s := tr.Set()
	if s.Size() != size {
		t.Fatalf("set of %d bytes for a device of %d", s.Size(), size)
	}
	consistentPoint := func() (uint64, []uint64) {
		run(t, "fsfreeze", "--freeze", mp)
		defer run(t, "fsfreeze", "--unfreeze", mp)
		flushBuffers(t, dev)
		n, err := tr.Cut(ctx)
		if err != nil {
			t.Fatalf("Cut: %v", err)
		}
		return n, blockHashes(t, image, off, size, bs)
	}
	zeroHash := maphash.Bytes(blockSeed, make([]byte, bs))
	n, prev := consistentPoint()
	s.Acknowledge(s.Pending(n), n) // the "full backup"
	for round := 0; round < rounds; round++ {
		workload(t, mp, round)
		n, cur := consistentPoint()
		if ok, why := s.Complete(); !ok {
			t.Fatalf("round %d: set incomplete: %s", round, why)
		}
		pending := s.Pending(n)
		traced := make([]bool, len(cur))
		var tracedN int64
		for _, e := range pending {
			for b := e.Offset / bs; b*bs < e.End(); b++ {
				traced[b] = true
				tracedN++
			}
		}
		var changed, missed int64
		var missedBlocks []int
		for b := range cur {
			if cur[b] == prev[b] {
				continue
			}
			changed++
			if !traced[b] {
				missed++
				missedBlocks = append(missedBlocks, b)
			}
		}
		if missed > 0 {
			// Were the events late or lost? ext4 mounted with discard
			// issues the discards of deleted files from a workqueue
			// after the journal commit, and FIFREEZE does not wait for
			// that work (fs/ext4/mballoc.c, ext4_process_freed_data: only
			// unmount flushes s_discard_work). Such a discard can reach
			// the device after the consistency point: the blocks are
			// free in the frozen filesystem (ext4 keeps them busy until
			// the discard is done), and the discard is recorded in the
			// next epoch. Anything else missing is a tracer failure.
			m, err := tr.Cut(ctx)
			if err != nil {
				t.Fatalf("Cut: %v", err)
			}
			later := make([]bool, len(cur))
			for _, e := range s.Pending(m) {
				for b := e.Offset / bs; b*bs < e.End(); b++ {
					later[b] = true
				}
			}
			var lateDiscards int64
			for _, b := range missedBlocks {
				if later[b] && cur[b] == zeroHash {
					lateDiscards++
					continue
				}
				if missed-lateDiscards <= 10 {
					t.Errorf("round %d: block %d (byte %d) changed but is not in the set (in the next epoch: %v)", round, b, int64(b)*bs, later[b])
				}
			}
			ok, why := s.Complete()
			if lateDiscards < missed {
				t.Fatalf("round %d: %d of %d changed blocks missed (%d of them discards recorded after the consistency point); complete %v %s",
					round, missed-lateDiscards, changed, lateDiscards, ok, why)
			}
			t.Logf("round %d: %d blocks were discarded by ext4's discard work after the freeze; they are in epoch %d", round, lateDiscards, m)
		}
		if changed == 0 {
			t.Fatalf("round %d: the workload changed nothing: the test tests nothing", round)
		}
		t.Logf("round %d: epoch %d, %d blocks changed, %d traced, false positives %.1f%% (longest run of empty ring reads %d)",
			round, n, changed, tracedN, 100*float64(tracedN-changed)/float64(max(tracedN, 1)), maxZeroRun.Load())
		changedTotal += changed
		tracedTotal += tracedN
		s.Acknowledge(pending, n) // the incremental backup was made durable
		if left := s.Pending(n); len(left) != 0 {
			t.Fatalf("round %d: %v still pending after acknowledge", round, left)
		}
		prev = cur
	}
	return changedTotal, tracedTotal
}

func rounds(ci, short int) int {
	if testing.Short() {
		return short
	}
	return ci
}

// TestTraceCoversEveryChangedBlock is the acceptance test on ext4 (whole
// loop device, discard mount option) and XFS (on a partition, so the
// partition offset is exercised): 0 misses over 22 rounds.
func TestTraceCoversEveryChangedBlock(t *testing.T) {
	requireTracing(t)
	var changed, traced int64
	t.Run("ext4", func(t *testing.T) {
		testenv.Require(t, testenv.Mkfs("ext4"), testenv.Mountable("ext4"))
		d := testenv.NewLoopDevice(t, 128<<20)
		d.Mkfs(t, "ext4", "-E", "lazy_itable_init=0,lazy_journal_init=0")
		mp := d.Mount(t, "discard")
		c, tr := traceRounds(t, d.Path, mp, d.Image, 0, d.Size, rounds(12, 3))
		changed += c
		traced += tr
	})
	t.Run("xfs-partition", func(t *testing.T) {
		testenv.Require(t, testenv.Mkfs("xfs"), testenv.Mountable("xfs"))
		image := testenv.NewImage(t, 200<<20)
		const partStart, partSize = 3 << 20, 192 << 20 // odd MiB start: not block-aligned by accident
		writeMBR(t, image, partStart, partSize)
		out, err := exec.Command("losetup", "--partscan", "--find", "--show", image).CombinedOutput()
		if err != nil {
			t.Fatalf("losetup: %v: %s", err, out)
		}
		loop := strings.TrimSpace(string(out))
		t.Cleanup(func() { exec.Command("losetup", "--detach", loop).Run() })
		// This kernel has no DOS partition parser; partx adds the
		// partition with BLKPG, which is what we need here.
		run(t, "partx", "--add", loop)
		part := loop + "p1"
		for i := 0; i < 100; i++ {
			if _, err := os.Stat(part); err == nil {
				break
			}
			time.Sleep(20 * time.Millisecond) // devtmpfs creates the node asynchronously
		}
		testenv.MkfsImage(t, part, "xfs")
		mp := testenv.TempDir(t)
		run(t, "mount", "-t", "xfs", "-o", "discard", part, mp)
		t.Cleanup(func() {
			exec.Command("fsfreeze", "--unfreeze", mp).Run()
			exec.Command("umount", mp).Run()
		})
		c, tr := traceRounds(t, part, mp, image, partStart, partSize, rounds(10, 2))
		changed += c
		traced += tr
	})
	if traced > 0 {
		t.Logf("all rounds: %d blocks changed, %d traced: false-positive ratio %.3f", changed, traced, float64(traced-changed)/float64(traced))
	}
}

// TestOverrunMarksIncomplete stalls the readers, as a starved machine
// would, with the smallest ring buffer while fio writes: the kernel
// overwrites events, and the set must say so.
func TestOverrunMarksIncomplete(t *testing.T) {
	requireTracing(t)
	testenv.Require(t, testenv.Mkfs("ext4"), testenv.Mountable("ext4"))
	d := testenv.NewFilesystem(t, "ext4", 64<<20)
	release := make(chan struct{})
	stall := func(int) { <-release }
	testHookBeforeDrain.Store(&stall)
	defer testHookBeforeDrain.Store(nil)
	tr := startTracer(t, d.Path, Options{BufferSizeKB: 4})
	stalled := true
	defer func() {
		if stalled {
			close(release)
		}
	}()
	run(t, "fio", "--name=flood", "--filename="+filepath.Join(d.MountPoint, "flood"), "--size=8M",
		"--rw=randwrite", "--bs=4k", "--direct=1", "--ioengine=psync", "--io_size=8M", "--output=/dev/null")
	close(release)
	stalled = false
	testHookBeforeDrain.Store(nil)
	if err := tr.Flush(context.Background()); err != nil {
		t.Fatal(err)
	}
	ok, why := tr.Set().Complete()
	if ok {
		t.Fatal("2048 writes into a 4 KiB ring with stalled readers left the set complete")
	}
	if !strings.Contains(why, "overrun") && !strings.Contains(why, "lost") {
		t.Fatalf("incomplete for another reason: %s", why)
	}
	t.Logf("set incomplete as it must be: %s", why)
}

// TestFullRingWakesTheReaders writes several times what the ring holds
// with a poll interval of an hour: only the kernel's wake-ups (the ring
// reaching buffer_percent) make the readers drain before Flush, so the set
// stays complete only if those wake-ups keep coming. (They stopped after
// the first one when the readers moved to the runtime poller's
// edge-triggered epoll, until the readers polled the file before each
// wait.)
func TestFullRingWakesTheReaders(t *testing.T) {
	requireTracing(t)
	d := testenv.NewLoopDevice(t, 256<<20)
	// 1408 KiB per CPU, the kernel's default, whatever this machine's
	// setting: 32768 writes of four events of about 52 bytes are 6.8 MB.
	// At 20,000 writes a second the readers have about 170 ms to answer a
	// wake-up before the ring overruns, so that a machine busy with other
	// tests does not fail this one; without wake-ups it overruns anyway.
	tr := startTracer(t, d.Path, Options{PollInterval: time.Hour, BufferSizeKB: 1408})
	run(t, "fio", "--name=flood", "--filename="+d.Path, "--size=256M", "--io_size=128M",
		"--rw=randwrite", "--bs=4k", "--direct=1", "--ioengine=libaio", "--iodepth=16",
		"--rate_iops=20000", "--randrepeat=1", "--norandommap", "--output=/dev/null")
	n, err := tr.Cut(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if ok, why := tr.Set().Complete(); !ok {
		t.Fatalf("the readers did not keep up with 128 MiB of writes: %s", why)
	}
	if c := tr.Set().Count(n); c < 16384 {
		t.Fatalf("%d blocks traced of 32768 random writes over 65536 blocks", c)
	}
}

// TestRefusesBusyFtraceAndRestores checks that Start leaves another user's
// tracer alone, and that Stop puts back what Start changed.
func TestRefusesBusyFtraceAndRestores(t *testing.T) {
	requireTracing(t)
	d := testenv.NewLoopDevice(t, 16<<20)
	dir := tracefsDir(t)
	ctl := func(name string) string {
		s, err := readSysString(filepath.Join(dir, name))
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	// Whatever the size was, it must come back: set a known one first.
	if err := writeFile(filepath.Join(dir, "buffer_size_kb"), "1408"); err != nil {
		t.Fatal(err)
	}
	beforeKB := ctl("buffer_size_kb")

	// Someone else's tracer.
	if err := writeFile(filepath.Join(dir, "current_tracer"), "blk"); err != nil {
		t.Fatal(err)
	}
	_, err := Start(context.Background(), d.Path, Options{Source: Ftrace})
	writeFile(filepath.Join(dir, "current_tracer"), "nop")
	if !errors.Is(err, ErrBusy) {
		t.Fatalf("Start with current_tracer=blk: %v, want ErrBusy", err)
	}

	tr, err := Start(context.Background(), d.Path, Options{BufferSizeKB: 64})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tr.Stop() })
	if tr.Source() != Ftrace {
		t.Logf("source %v (classic relay files are readable here)", tr.Source())
	}
	if tr.Source() == Ftrace {
		// A second Tracer of the same process joins the session; its
		// Stop leaves the first one tracing.
		tr2, err := Start(context.Background(), d.Path, Options{})
		if err != nil {
			t.Fatalf("second Start: %v", err)
		}
		if err := tr2.Stop(); err != nil {
			t.Fatal(err)
		}
		if got := ctl("current_tracer"); got != "blk" {
			t.Fatalf("current_tracer %q after the second Tracer stopped", got)
		}
		if ok, why := tr.Set().Complete(); !ok {
			t.Fatalf("the second Tracer's Stop made the first incomplete: %s", why)
		}
	}
	if got := ctl("current_tracer"); tr.Source() == Ftrace && got != "blk" {
		t.Fatalf("current_tracer %q while tracing", got)
	}
	if err := tr.Stop(); err != nil {
		t.Fatal(err)
	}
	if got := ctl("current_tracer"); got != "nop" {
		t.Errorf("current_tracer %q after Stop", got)
	}
	if got := ctl("buffer_size_kb"); got != beforeKB {
		t.Errorf("buffer_size_kb %q after Stop, was %q", got, beforeKB)
	}
	name := filepath.Base(d.Path)
	if en, _ := readSysString(filepath.Join("/sys/block", name, "trace", "enable")); en != "0" {
		t.Errorf("trace/enable of %s is %q after Stop", name, en)
	}
	if ok, _ := tr.Set().Complete(); ok {
		t.Error("a stopped trace left its set complete")
	}
	if err := tr.Flush(context.Background()); !errors.Is(err, ErrStopped) {
		t.Errorf("Flush after Stop: %v", err)
	}
}

// writeMBR writes a DOS partition table with one Linux partition.
func writeMBR(t *testing.T, image string, start, size int64) {
	t.Helper()
	var mbr [512]byte
	e := mbr[0x1be:]
	e[4] = 0x83
	binary.LittleEndian.PutUint32(e[8:], uint32(start/512))
	binary.LittleEndian.PutUint32(e[12:], uint32(size/512))
	mbr[510], mbr[511] = 0x55, 0xaa
	f, err := os.OpenFile(image, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteAt(mbr[:], 0); err != nil {
		t.Fatal(err)
	}
}
