// Package migrations embeds the V3 schema as goose SQL migrations, so the
// schema ships inside the v3ctl binary.
package migrations

import "embed"

// FS holds every *.sql migration, applied in version order by goose.
//
//go:embed *.sql
var FS embed.FS
