// compose-check loads a compose file with compose-go, the library Docker Compose itself loads
// files with: schema validation, interpolation (a `${VAR:?message}` without VAR fails),
// normalisation and the consistency checks (depends_on, network_mode: service:..., secrets,
// volumes). It is `docker compose config` without a Docker engine.
//
//	compose-check FILE    print the loaded project (every profile enabled) as JSON
//	compose-check schema  print the Compose Specification schema embedded in compose-go
package main

import (
	"context"
	"fmt"
	"os"

	"github.com/compose-spec/compose-go/v2/cli"
	"github.com/compose-spec/compose-go/v2/schema"
)

func main() {
	if len(os.Args) != 2 {
		fmt.Fprintln(os.Stderr, "usage: compose-check FILE | compose-check schema")
		os.Exit(2)
	}
	if os.Args[1] == "schema" {
		fmt.Print(schema.Schema)
		return
	}
	options, err := cli.NewProjectOptions(
		[]string{os.Args[1]},
		cli.WithOsEnv,
		cli.WithProfiles([]string{"*"}),
	)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	project, err := options.LoadProject(context.Background())
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	out, err := project.MarshalJSON()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	fmt.Println(string(out))
}
