//go:build !linux

package blockdev

import "errors"

func mountsOf(device string) ([]Mount, error) { return nil, errors.ErrUnsupported }

func deviceOf(path string) (string, Mount, error) { return "", Mount{}, errors.ErrUnsupported }

func loopDevicesOf(file string) ([]string, error) { return nil, errors.ErrUnsupported }

func mountsOfImage(file string) ([]Mount, error) { return nil, errors.ErrUnsupported }
