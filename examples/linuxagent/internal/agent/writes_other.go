//go:build !linux

package agent

import "errors"

func writeCount(device string) (uint64, error) { return 0, errors.ErrUnsupported }
