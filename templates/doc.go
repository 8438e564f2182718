// Package templates holds the server's HTML pages as templ components.
// The generated *_templ.go files are committed; `make generate` rebuilds
// them and `make test` checks they are current.
package templates
