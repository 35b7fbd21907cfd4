// Command stamped prints its version line; the version package's test builds it with -ldflags -X
// as make build does.
package main

import (
	"fmt"

	"github.com/ipledger/ipledger/internal/version"
)

func main() { fmt.Println(version.String("stamped")) }
