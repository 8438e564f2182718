# Converge. `make run` builds and starts the server on :8000; `make test`
# runs every check CI runs.
GO      ?= go
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS := -s -w -X github.com/converge-ci/converge/internal/cli.Version=$(VERSION)
CMDS    := converge agent wsproxy tcptows
# Downloadable binaries, embedded into the server by `make dist`.
DIST_PLATFORMS := linux/amd64 linux/arm64 darwin/amd64 darwin/arm64 windows/amd64

.PHONY: all build wasm run test tools check generate vet bench bench-agents bench-connect bench-relay bench-streams bench-run bench-failover bench-record bench-together dist dist-bins action-sums clean

all: build

build: wasm
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags '$(LDFLAGS)' -o bin/ $(addprefix ./cmd/,$(CMDS))

# wasm builds the browser terminal's SSH client (cmd/webterm) into
# static/term/, gzipped, with the wasm_exec.js of the same Go; the server
# embeds both. The sums of what browsers run: converge --version.
wasm:
	GOOS=js GOARCH=wasm $(GO) build -trimpath -ldflags '-s -w' -o bin/webterm.wasm ./cmd/webterm
	gzip -9n < bin/webterm.wasm > static/term/webterm.wasm.gz
	cp "$$($(GO) env GOROOT)/lib/wasm/wasm_exec.js" static/term/wasm_exec.js

# run listens on every interface; ./bin/converge --addr 127.0.0.1:8000
# keeps a demo on loopback. A demo's caps: a laptop's descriptor limit
# (macOS: 10,240 a process) holds them, so the server need not warn about
# it; a production server keeps the defaults and raises its limit
# (docs/operations.md).
run: build
	./bin/converge --addr :8000 --max-agents 1000 --max-streams 1000

generate:
	$(GO) tool templ generate

# check fails when generated code, formatting or go.mod is not current.
check:
	@$(GO) tool templ generate >/dev/null 2>&1 && git diff --exit-code --stat -- '*_templ.go' || \
		{ echo "templ output is stale: run 'make generate' and commit"; exit 1; }
	@test -z "$$(gofmt -l $$(git ls-files '*.go' | grep -v '_templ.go$$'))" || \
		{ echo "gofmt would change:"; gofmt -l $$(git ls-files '*.go' | grep -v '_templ.go$$'); exit 1; }
	@cp go.mod /tmp/converge.go.mod.bak && cp go.sum /tmp/converge.go.sum.bak && $(GO) mod tidy && \
		{ git diff --exit-code --stat -- go.mod go.sum || { echo "go mod tidy changed go.mod/go.sum: commit the result"; exit 1; }; }

# vet checks the code for the host and for every platform `make dist` builds.
vet:
	$(GO) vet ./...
	@host=$$($(GO) env GOOS)/$$($(GO) env GOARCH); for p in $(DIST_PLATFORMS); do \
		[ $$p = $$host ] && continue; \
		echo "vet $$p"; \
		GOOS=$${p%/*} GOARCH=$${p#*/} $(GO) vet ./... || exit 1; \
	done

# tools fails at once, printing the apt-get line, when a program the tests
# run is missing (.ci/check-tools lists them), instead of after the build.
tools:
	@.ci/check-tools

test: tools check vet build
	$(GO) test -race -count=1 -timeout 9m ./...

# bench measures bin/* (relay vs direct, ~5 min) and prints the table; it
# also leaves it in bench-results.txt. See docs/benchmarks.md.
bench: build
	$(GO) test -count=1 -timeout 20m -run '^TestBenchTable$$' ./internal/test/bench -v -bench-table \
		-bench-bin=$(CURDIR)/bin -bench-out=$(CURDIR)/bench-results.txt

# bench-agents prints only the many-agents rows (~1 min): 10,000 synthetic
# agents, memory, lookups, restarts. Needs `ulimit -n` above 10,300.
bench-agents: build
	$(GO) test -count=1 -timeout 20m -run '^TestBenchAgents$$' ./internal/test/bench -v -bench-table \
		-bench-bin=$(CURDIR)/bin

# bench-connect prints only the connect rows (~15 s): a fresh `ssh host
# true`, relay against direct, at 0 ms, 50 ms, and with the server halfway.
bench-connect: build
	$(GO) test -count=1 -timeout 5m -run '^TestBenchConnect$$' ./internal/test/bench -v -bench-table \
		-bench-bin=$(CURDIR)/bin

# bench-relay prints only the relay CPU rows (~2 min): converge's and
# wsproxy's CPU per MiB over sftp get, sftp put and ssh cat, at 0 and 50 ms.
bench-relay: build
	$(GO) test -count=1 -timeout 10m -run '^TestBenchRelayCPU$$' ./internal/test/bench -v -bench-table \
		-bench-bin=$(CURDIR)/bin -bench-size=128 -bench-reps=2

# bench-run prints only the `agent run` row (~1 s): a passing step
# through the agent against the command alone.
bench-run: build
	$(GO) test -count=1 -timeout 5m -run '^TestBenchRun$$' ./internal/test/bench -v -bench-table \
		-bench-bin=$(CURDIR)/bin

# bench-record prints only the recording rows (~1 min): ssh cat and a
# shell's echo round trip with --record-to against without.
bench-record: build
	$(GO) test -count=1 -timeout 10m -run '^TestBenchRecord$$' ./internal/test/bench -v -bench-table \
		-bench-bin=$(CURDIR)/bin -bench-echo=10000

# bench-failover prints only the Redis Sentinel failover rows (~30 s):
# kill -9 of the master to the first registration, three times.
bench-failover: build
	$(GO) test -count=1 -timeout 5m -run '^TestBenchFailover$$' ./internal/test/bench -v -bench-table \
		-bench-bin=$(CURDIR)/bin

# bench-streams prints only the many-streams rows (~1 min): 200 streams at
# once through one converge, their spread and fairness.
bench-streams: build
	$(GO) test -count=1 -timeout 10m -run '^TestBenchStreams$$' ./internal/test/bench -v -bench-table \
		-bench-bin=$(CURDIR)/bin

# bench-together prints only the shared-shell rows (~15 s): a shell's
# echo with observers attached, and what an observer costs the agent.
bench-together: build
	$(GO) test -count=1 -timeout 5m -run '^TestBenchTogether$$' ./internal/test/bench -v -bench-table \
		-bench-bin=$(CURDIR)/bin

# dist builds the downloads the server embeds (static/dist/) and the
# server. Reproducible: -trimpath and -buildvcs=false leave out the build
# folder and the git state, so the same source, VERSION and Go give the
# same bytes, and a release's sums (make action-sums) match its servers.
dist: wasm dist-bins
	CGO_ENABLED=0 $(GO) build -trimpath -buildvcs=false -ldflags '$(LDFLAGS)' -o bin/converge ./cmd/converge

DISTDIR   ?= static/dist
DIST_CMDS ?= agent wsproxy tcptows
dist-bins:
	@for p in $(DIST_PLATFORMS); do \
		os=$${p%/*}; arch=$${p#*/}; ext=; [ $$os = windows ] && ext=.exe; \
		for c in $(DIST_CMDS); do \
			echo "build $$c $$os/$$arch"; \
			CGO_ENABLED=0 GOOS=$$os GOARCH=$$arch $(GO) build -trimpath -buildvcs=false -ldflags '$(LDFLAGS)' \
				-o $(DISTDIR)/$$c-$$os-$$arch$$ext ./cmd/$$c || exit 1; \
		done; \
	done

# action-sums is the release step that pins, next to action.yml, the
# SHA-256 of the agents a server built by `make dist VERSION=$(RELEASE)`
# from the same commit with the same Go serves: the Action checks the
# agent it downloads against them, so the server cannot choose the code
# that runs in the job. Run it on the release commit, clean, and commit
# the file with the tag:  make action-sums RELEASE=v1.2.3
AGENT_SUMS ?= action/agent.sha256
action-sums:
	@test -n "$(RELEASE)" || { echo "set RELEASE to the version being released: make action-sums RELEASE=v1.2.3"; exit 1; }
	@tmp=$$(mktemp -d) && trap 'rm -rf "$$tmp"' EXIT && \
	$(MAKE) --no-print-directory dist-bins VERSION=$(RELEASE) DIST_CMDS=agent DISTDIR="$$tmp" && \
	{ echo "# SHA-256 of the Converge agents a server built by make dist VERSION=$(RELEASE) serves"; \
	  echo "# version: $(RELEASE)"; \
	  echo "# go: $$($(GO) env GOVERSION)"; \
	  echo "# source: $$(git rev-parse HEAD 2>/dev/null || echo unknown)$$(git diff --quiet HEAD 2>/dev/null || echo ' (with changes)')"; \
	  (cd "$$tmp" && sha256sum agent-*); } > "$(AGENT_SUMS).tmp" && mv "$(AGENT_SUMS).tmp" "$(AGENT_SUMS)"
	@echo "wrote $(AGENT_SUMS)"

clean:
	rm -rf bin static/term/webterm.wasm.gz
	find static/dist -type f ! -name README.txt -delete
