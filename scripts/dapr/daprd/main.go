// daprd with Dapr's stable components plus one alpha component, the OpenAI conversation
// component (it serves any OpenAI-compatible server: vLLM in production, the local one in
// tests). `-tags allcomponents` would bring every alpha component and their dependencies; this
// registers the one the agent's LLM calls need, the way dapr's own cmd/daprd/components does.
package main

import (
	"github.com/dapr/components-contrib/conversation/openai"
	"github.com/dapr/dapr/cmd/daprd/app"
	"github.com/dapr/dapr/pkg/components/conversation"
)

func init() {
	conversation.DefaultRegistry.RegisterComponent(openai.NewOpenAI, "openai")
}

func main() {
	app.Run()
}
