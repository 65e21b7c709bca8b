//go:build tools

// Package tools pins the Pulumi CLI (github.com/pulumi/pulumi/pkg/v3/cmd/pulumi)
// so that `go build` in this module builds it at the exact version of the
// PyPI `pulumi` package in requirements.txt. scripts/install-pulumi.sh does it.
package tools

import _ "github.com/pulumi/pulumi/pkg/v3/cmd/pulumi"
