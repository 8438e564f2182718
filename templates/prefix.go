package templates

import "context"

// A server reached under a sub-path (https://example.com/converge/) gives
// every page the path prefix its routes are public under, through the
// rendering context, so that each page and component links correctly
// without threading the prefix through its data.

type prefixKey struct{}

// WithPrefix returns ctx carrying prefix ("" or "/converge", no trailing
// slash), which the links of pages rendered with it start with. The
// caller checks prefix: it is put into href and src attributes as is.
func WithPrefix(ctx context.Context, prefix string) context.Context {
	return context.WithValue(ctx, prefixKey{}, prefix)
}

// link is the public path of a route of the server ("/static/style.css",
// "/"), under the prefix ctx carries (none without WithPrefix).
func link(ctx context.Context, route string) string {
	p, _ := ctx.Value(prefixKey{}).(string)
	return p + route
}
