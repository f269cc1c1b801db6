package mtcp

import (
	"bufio"
	"context"
	"io"
)

type blockResult struct {
	data []byte
	err  error
}

// parallelReader decompresses Blocks located through the Index with up
// to Workers goroutines, and returns their data in order. At most
// Workers+1 decompressed Blocks are held at once.
type parallelReader struct {
	order  chan chan blockResult
	cancel context.CancelFunc
	cur    []byte
	err    error
}

func newParallelReader(ctx context.Context, ra io.ReaderAt, locs []blockLoc, o ReaderOptions) *parallelReader {
	ctx, cancel := context.WithCancel(ctx)
	pr := &parallelReader{order: make(chan chan blockResult, o.Workers), cancel: cancel}
	sem := make(chan struct{}, o.Workers)
	go func() {
		defer close(pr.order)
		for _, l := range locs {
			ch := make(chan blockResult, 1)
			select {
			case pr.order <- ch:
			case <-ctx.Done():
				return
			}
			select {
			case sem <- struct{}{}:
			case <-ctx.Done():
				ch <- blockResult{err: ctx.Err()}
				return
			}
			go func() {
				data, err := decodeBlockAt(ra, l, o)
				<-sem
				ch <- blockResult{data, err}
			}()
		}
	}()
	return pr
}

func (pr *parallelReader) Read(p []byte) (int, error) {
	for len(pr.cur) == 0 {
		if pr.err != nil {
			return 0, pr.err
		}
		ch, ok := <-pr.order
		if !ok {
			pr.err = io.EOF
			continue
		}
		res := <-ch
		if res.err != nil {
			pr.err = res.err
			pr.cancel()
			continue
		}
		pr.cur = res.data
		if len(p) == 0 {
			return 0, nil
		}
	}
	n := copy(p, pr.cur)
	pr.cur = pr.cur[n:]
	return n, nil
}

func (pr *parallelReader) Close() error {
	pr.cancel()
	return nil
}

// decodeBlockAt decompresses the Block at l and verifies it against the
// Index record.
func decodeBlockAt(ra io.ReaderAt, l blockLoc, o ReaderOptions) ([]byte, error) {
	br := bufio.NewReaderSize(io.NewSectionReader(ra, l.offset, padded4(l.rec.unpadded)), 64<<10)
	b, err := newBlockReader(br, l.check, l.rec.uncompressed, o.MaxDictSize)
	if err != nil {
		return nil, err
	}
	buf := make([]byte, l.rec.uncompressed)
	if _, err := io.ReadFull(b, buf); err != nil {
		return nil, truncated(err)
	}
	var one [1]byte
	if n, err := b.Read(one[:]); n != 0 || err != io.EOF {
		if err == nil || err == io.EOF {
			err = formatError("block at offset %d holds more than the index says", l.offset)
		}
		return nil, err
	}
	if b.rec.unpadded != l.rec.unpadded {
		return nil, formatError("block at offset %d is %d bytes, index says %d", l.offset, b.rec.unpadded, l.rec.unpadded)
	}
	return buf, nil
}
