//go:build !unix

package redistest

import "os"

var terminate = os.Kill
