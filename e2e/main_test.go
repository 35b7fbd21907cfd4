package e2e_test

import (
	"os"
	"testing"

	"github.com/ipledger/ipledger/e2e/harness"
)

func TestMain(m *testing.M) { os.Exit(harness.Main(m)) }
