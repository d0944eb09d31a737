package main

import (
	"fmt"
	"io"
	"runtime/debug"
	"strings"
)

// runVersion is "herald version": the command's module version and the
// versions of the herald modules and the Go toolchain it was built with,
// from the build information Go stamps into the binary ("(devel)" for a
// build from a checkout).
func runVersion(args []string, stdout, stderr io.Writer) int {
	if len(args) > 0 {
		if args[0] == "-h" || args[0] == "-help" || args[0] == "--help" {
			fmt.Fprintln(stdout, "Usage: herald version\n\nPrints the version of this herald binary, of the herald modules it\ncontains, and of the Go toolchain that built it.")
			return 0
		}
		fmt.Fprintf(stderr, "herald version: unexpected arguments %q\nRun 'herald version -h' for usage.\n", args)
		return 2
	}
	info, ok := debug.ReadBuildInfo()
	if !ok {
		fmt.Fprintln(stderr, "herald version: this binary carries no build information")
		return 1
	}
	fmt.Fprintf(stdout, "herald %s (%s)\n", info.Main.Version, info.GoVersion)
	for _, d := range info.Deps {
		if strings.HasPrefix(d.Path, "github.com/heraldbus/herald") {
			version := d.Version
			if d.Replace != nil {
				version += " => " + d.Replace.Path
			}
			fmt.Fprintf(stdout, "  %s %s\n", d.Path, version)
		}
	}
	for _, s := range info.Settings {
		if s.Key == "vcs.revision" || s.Key == "vcs.time" || s.Key == "vcs.modified" {
			fmt.Fprintf(stdout, "  %s %s\n", s.Key, s.Value)
		}
	}
	return 0
}
