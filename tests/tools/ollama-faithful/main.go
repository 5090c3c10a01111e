// ollama-faithful is a test upstream that reads requests with Ollama's own
// code: the routes of Ollama's server (server/routes.go, GenerateRoutes),
// its request types (api), its OpenAI and Anthropic compatibility
// middleware (middleware), Go's encoding/json through gin's binding as
// Ollama uses it, and its model name parser (types/model). It runs no model:
// it answers with what it resolved, so tests can compare that with what the
// gateway judged.
//
// Every answer carries the verdict in headers:
//
//	X-Verdict-Model        the installed model the request resolved to
//	                       (Ollama's DisplayShortest), empty when none
//	X-Verdict-Parsed       chat and generate: the name Ollama's parser made
//	                       of the request's model (DisplayShortest), whether
//	                       installed or not; "invalid" when it refused it
//	X-Verdict-Stream       true/false, as the handler read `stream`
//	X-Verdict-Num-Predict  options.num_predict as the handler read it
//	X-Verdict-Headers      base64 (std) of the JSON of the request headers
//	X-Verdict-Route        the route that handled the request
//
// Usage: ollama-faithful -addr-file PATH [-listen 127.0.0.1:0] -models a,b,c
package main

import (
	"cmp"
	"encoding/base64"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/gin-gonic/gin"
	"github.com/ollama/ollama/api"
	"github.com/ollama/ollama/middleware"
	"github.com/ollama/ollama/types/model"
)

// installed are the models this server "has", as Ollama's manifests.
var installed []model.Name

// resolve is Ollama's getExistingName followed by the manifest lookup: each
// part is matched without regard to case against the installed models.
func resolve(n model.Name) (model.Name, bool) {
	var set model.Name
	for _, e := range installed {
		if set.Host == "" && strings.EqualFold(e.Host, n.Host) {
			n.Host = e.Host
		}
		if set.Namespace == "" && strings.EqualFold(e.Namespace, n.Namespace) {
			n.Namespace = e.Namespace
		}
		if set.Model == "" && strings.EqualFold(e.Model, n.Model) {
			n.Model = e.Model
		}
		if set.Tag == "" && strings.EqualFold(e.Tag, n.Tag) {
			n.Tag = e.Tag
		}
	}
	for _, e := range installed {
		if e == n {
			return n, true
		}
	}
	return n, false
}

func verdict(c *gin.Context, route string, resolved string) {
	h, _ := json.Marshal(c.Request.Header)
	c.Header("X-Verdict-Route", route)
	c.Header("X-Verdict-Model", resolved)
	c.Header("X-Verdict-Headers", base64.StdEncoding.EncodeToString(h))
}

func parsed(c *gin.Context, name model.Name) {
	if name.IsValid() {
		c.Header("X-Verdict-Parsed", name.DisplayShortest())
	} else {
		c.Header("X-Verdict-Parsed", "invalid")
	}
}

func bind(c *gin.Context, req any) bool {
	if err := c.ShouldBindJSON(req); errors.Is(err, io.EOF) {
		c.AbortWithStatusJSON(http.StatusBadRequest, gin.H{"error": "missing request body"})
		return false
	} else if err != nil {
		c.AbortWithStatusJSON(http.StatusBadRequest, gin.H{"error": err.Error()})
		return false
	}
	return true
}

func numPredict(opts map[string]any) string {
	var o api.Options
	if err := o.FromMap(opts); err != nil {
		return "error: " + err.Error()
	}
	if _, ok := opts["num_predict"]; !ok {
		return ""
	}
	return strconv.Itoa(o.NumPredict)
}

// chat is Ollama's ChatHandler up to the model: binding, name parsing,
// resolution; then one answer (streamed as NDJSON by default).
func chat(c *gin.Context) {
	var req api.ChatRequest
	if !bind(c, &req) {
		return
	}
	name := model.ParseName(req.Model)
	parsed(c, name)
	if !name.IsValid() {
		verdict(c, "chat", "")
		c.JSON(http.StatusBadRequest, gin.H{"error": "model is required"})
		return
	}
	name, ok := resolve(name)
	if !ok {
		verdict(c, "chat", "")
		c.JSON(http.StatusNotFound, gin.H{"error": fmt.Sprintf("model '%s' not found", req.Model)})
		return
	}
	stream := req.Stream == nil || *req.Stream
	verdict(c, "chat", name.DisplayShortest())
	c.Header("X-Verdict-Stream", strconv.FormatBool(stream))
	c.Header("X-Verdict-Num-Predict", numPredict(req.Options))
	resp := api.ChatResponse{
		Model:     name.DisplayShortest(),
		CreatedAt: time.Unix(0, 0).UTC(),
		Message:   api.Message{Role: "assistant", Content: "ok"},
		Done:      true,
		Metrics:   api.Metrics{PromptEvalCount: 3, EvalCount: 2},
	}
	respond(c, stream, resp)
}

// generate is Ollama's GenerateHandler up to the model.
func generate(c *gin.Context) {
	var req api.GenerateRequest
	if !bind(c, &req) {
		return
	}
	name := model.ParseName(req.Model)
	parsed(c, name)
	if !name.IsValid() {
		verdict(c, "generate", "")
		c.JSON(http.StatusNotFound, gin.H{"error": fmt.Sprintf("model '%s' not found", req.Model)})
		return
	}
	name, ok := resolve(name)
	if !ok {
		verdict(c, "generate", "")
		c.JSON(http.StatusNotFound, gin.H{"error": fmt.Sprintf("model '%s' not found", req.Model)})
		return
	}
	stream := req.Stream == nil || *req.Stream
	verdict(c, "generate", name.DisplayShortest())
	c.Header("X-Verdict-Stream", strconv.FormatBool(stream))
	c.Header("X-Verdict-Num-Predict", numPredict(req.Options))
	resp := api.GenerateResponse{
		Model:     name.DisplayShortest(),
		CreatedAt: time.Unix(0, 0).UTC(),
		Response:  "ok",
		Done:      true,
		Metrics:   api.Metrics{PromptEvalCount: 3, EvalCount: 2},
	}
	respond(c, stream, resp)
}

func respond(c *gin.Context, stream bool, resp any) {
	if !stream {
		c.JSON(http.StatusOK, resp)
		return
	}
	c.Header("Content-Type", "application/x-ndjson")
	c.Status(http.StatusOK)
	b, _ := json.Marshal(resp)
	// One JSON object per write, as Ollama's streamResponse does.
	_, _ = c.Writer.Write(append(b, '\n'))
}

// embed is Ollama's EmbedHandler (getExistingName without IsValid).
func embed(c *gin.Context) {
	var req api.EmbedRequest
	if !bind(c, &req) {
		return
	}
	name, ok := resolve(model.ParseName(req.Model))
	if !ok || !name.IsValid() {
		verdict(c, "embed", "")
		c.JSON(http.StatusNotFound, gin.H{"error": fmt.Sprintf("model '%s' not found", req.Model)})
		return
	}
	verdict(c, "embed", name.DisplayShortest())
	c.JSON(http.StatusOK, api.EmbedResponse{Model: name.DisplayShortest(), Embeddings: [][]float32{{0.5}}, PromptEvalCount: 3})
}

// embeddings is Ollama's legacy EmbeddingsHandler.
func embeddings(c *gin.Context) {
	var req api.EmbeddingRequest
	if !bind(c, &req) {
		return
	}
	name := model.ParseName(req.Model)
	if !name.IsValid() {
		verdict(c, "embeddings", "")
		c.JSON(http.StatusBadRequest, gin.H{"error": "model is required"})
		return
	}
	name, ok := resolve(name)
	if !ok {
		verdict(c, "embeddings", "")
		c.JSON(http.StatusNotFound, gin.H{"error": fmt.Sprintf("model '%s' not found", req.Model)})
		return
	}
	verdict(c, "embeddings", name.DisplayShortest())
	c.JSON(http.StatusOK, api.EmbeddingResponse{Embedding: []float64{0.5}})
}

// show is Ollama's ShowHandler and GetModelInfo up to the model.
func show(c *gin.Context) {
	var req api.ShowRequest
	if !bind(c, &req) {
		return
	}
	if req.Model == "" {
		if req.Name == "" {
			c.AbortWithStatusJSON(http.StatusBadRequest, gin.H{"error": "model is required"})
			return
		}
		req.Model = req.Name
	}
	name := model.ParseName(req.Model)
	if !name.IsValid() {
		verdict(c, "show", "")
		c.JSON(http.StatusInternalServerError, gin.H{"error": model.Unqualified(name).Error()})
		return
	}
	name, ok := resolve(name)
	if !ok {
		verdict(c, "show", "")
		c.JSON(http.StatusNotFound, gin.H{"error": fmt.Sprintf("model '%s' not found", req.Model)})
		return
	}
	verdict(c, "show", name.DisplayShortest())
	c.JSON(http.StatusOK, api.ShowResponse{Modelfile: "FROM " + name.DisplayShortest(), ModifiedAt: time.Unix(0, 0).UTC()})
}

// list is Ollama's ListHandler: every installed model by DisplayShortest.
func list(c *gin.Context) {
	verdict(c, "list", "")
	models := []api.ListModelResponse{}
	for _, n := range installed {
		models = append(models, api.ListModelResponse{Name: n.DisplayShortest(), Model: n.DisplayShortest(), ModifiedAt: time.Unix(0, 0).UTC()})
	}
	c.JSON(http.StatusOK, api.ListResponse{Models: models})
}

// ps is Ollama's PsHandler, with every installed model loaded.
func ps(c *gin.Context) {
	verdict(c, "ps", "")
	models := []api.ProcessModelResponse{}
	for _, n := range installed {
		models = append(models, api.ProcessModelResponse{Name: n.DisplayShortest(), Model: n.DisplayShortest()})
	}
	c.JSON(http.StatusOK, api.ProcessResponse{Models: models})
}

// reached answers routes whose handling is not under test: reaching them at
// all is the verdict.
func reached(route string) gin.HandlerFunc {
	return func(c *gin.Context) {
		verdict(c, route, "")
		c.JSON(http.StatusOK, gin.H{"status": "reached " + route})
	}
}

func main() {
	listen := flag.String("listen", "127.0.0.1:0", "address to listen on")
	addrFile := flag.String("addr-file", "", "write the bound address here once listening")
	models := flag.String("models", "", "comma-separated installed models")
	flag.Parse()
	for _, m := range strings.Split(*models, ",") {
		if m = strings.TrimSpace(m); m == "" {
			continue
		}
		n := model.ParseName(m)
		if !n.IsValid() {
			log.Fatalf("invalid model name %q", m)
		}
		installed = append(installed, n)
	}

	gin.SetMode(gin.ReleaseMode)
	r := gin.New()
	r.HandleMethodNotAllowed = true

	// The routes of Ollama 0.17's GenerateRoutes, in its order.
	r.HEAD("/", func(c *gin.Context) { c.String(http.StatusOK, "Ollama is running") })
	r.GET("/", func(c *gin.Context) { c.String(http.StatusOK, "Ollama is running") })
	r.HEAD("/api/version", func(c *gin.Context) { c.JSON(http.StatusOK, gin.H{"version": "0.17.4"}) })
	r.GET("/api/version", func(c *gin.Context) { c.JSON(http.StatusOK, gin.H{"version": "0.17.4"}) })
	r.GET("/api/status", reached("status"))
	r.POST("/api/pull", reached("pull"))
	r.POST("/api/push", reached("push"))
	r.HEAD("/api/tags", list)
	r.GET("/api/tags", list)
	r.POST("/api/show", show)
	r.DELETE("/api/delete", reached("delete"))
	r.POST("/api/me", reached("me"))
	r.POST("/api/signout", reached("signout"))
	r.DELETE("/api/user/keys/:encodedKey", reached("user-keys"))
	r.POST("/api/create", reached("create"))
	r.POST("/api/blobs/:digest", reached("blobs"))
	r.HEAD("/api/blobs/:digest", reached("blobs"))
	r.POST("/api/copy", reached("copy"))
	r.GET("/api/experimental/aliases", reached("aliases"))
	r.POST("/api/experimental/aliases", reached("aliases"))
	r.DELETE("/api/experimental/aliases", reached("aliases"))
	r.GET("/api/ps", ps)
	r.POST("/api/generate", generate)
	r.POST("/api/chat", chat)
	r.POST("/api/embed", embed)
	r.POST("/api/embeddings", embeddings)
	r.POST("/v1/chat/completions", middleware.ChatMiddleware(), chat)
	r.POST("/v1/completions", middleware.CompletionsMiddleware(), generate)
	r.POST("/v1/embeddings", middleware.EmbeddingsMiddleware(), embed)
	r.GET("/v1/models", middleware.ListMiddleware(), list)
	r.GET("/v1/models/:model", middleware.RetrieveMiddleware(), show)
	r.POST("/v1/responses", middleware.ResponsesMiddleware(), chat)
	r.POST("/v1/images/generations", middleware.ImageGenerationsMiddleware(), generate)
	r.POST("/v1/images/edits", middleware.ImageEditsMiddleware(), generate)
	r.POST("/v1/messages", middleware.AnthropicMessagesMiddleware(), chat)

	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		log.Fatal(err)
	}
	addr := ln.Addr().String()
	if *addrFile != "" {
		tmp := *addrFile + ".tmp"
		if err := os.WriteFile(tmp, []byte(addr), 0o644); err != nil {
			log.Fatal(err)
		}
		if err := os.Rename(tmp, *addrFile); err != nil {
			log.Fatal(err)
		}
	}
	log.Printf("ollama-faithful listening on %s with models %s", addr, cmp.Or(*models, "(none)"))
	log.Fatal(http.Serve(ln, r))
}
