//go:build !linux

package blockdev

import (
	"context"
	"errors"
)

func (s *Sequencer) run(ctx context.Context, critical func(context.Context) error, rep Report) (Report, error) {
	return rep, errors.ErrUnsupported
}
