package nbd

import (
	"testing"

	"github.com/blockimage/blockimage/internal/testenv"
)

func TestMain(m *testing.M) { testenv.Main(m) }
