# cairn: the front door. `make run` and `make test` are all a fresh Debian/Ubuntu machine needs.
BOARD   ?= qemu-aarch64
BOARDS  ?= qemu-aarch64 qemu-x86_64
VERSION ?= 0.1.0
OUT     ?= out
CARGO   ?= cargo
# Reproducible builds: every file in an image carries this time.
SOURCE_DATE_EPOCH ?= $(shell git log -1 --format=%ct 2>/dev/null || echo 0)
export SOURCE_DATE_EPOCH
# QEMU tests boot under software emulation; two VMs at a time suit a 2-core machine.
QEMU_TEST_THREADS ?= 2

# The key update bundles are signed with; made on first use. Keep your own for real fleets.
SIGN_KEY ?= $(OUT)/keys/cairn-dev.key

IMAGE_TOOL := target/release/cairn-image
QEMU_TOOL  := target/release/cairn-qemu

.PHONY: help deps tools image images update-bundles run test unit-test qemu-test bench lint clean

help:
	@sed -n 's/^## //p' README.md | head -40

deps:
	@scripts/deps.sh

tools: deps
	$(CARGO) build --release --locked -p cairn-image -p qemu-tests --bins

$(SIGN_KEY): | tools
	$(IMAGE_TOOL) keygen --out $(SIGN_KEY)

image: tools $(SIGN_KEY)
	$(IMAGE_TOOL) build --board boards/$(BOARD).toml --out $(OUT) --version $(VERSION) --sign-key $(SIGN_KEY)

images: tools $(SIGN_KEY)
	@for b in $(BOARDS); do \
	  $(IMAGE_TOOL) build --board boards/$$b.toml --out $(OUT) --version $(VERSION) --sign-key $(SIGN_KEY) || exit 1; \
	done

# What the QEMU update tests install: a newer version, and one whose cairn is built broken
# (it must roll back by itself). Separate output trees; downloads share the cache.
update-bundles: tools $(SIGN_KEY)
	@for b in $(BOARDS); do \
	  $(IMAGE_TOOL) build --board boards/$$b.toml --out $(OUT)/update-v2 --cache $(OUT)/.cache \
	    --version 0.2.0 --sign-key $(SIGN_KEY) || exit 1; \
	  $(IMAGE_TOOL) build --board boards/$$b.toml --out $(OUT)/update-v3 --cache $(OUT)/.cache \
	    --version 0.3.0 --sign-key $(SIGN_KEY) --test-broken-runtime || exit 1; \
	done

run: image
	$(QEMU_TOOL) run --board $(BOARD)

unit-test: deps
	$(CARGO) test --locked --workspace --exclude qemu-tests

qemu-test: images update-bundles
	CAIRN_OUT=$(abspath $(OUT)) $(CARGO) test --locked -p qemu-tests -- --test-threads=$(QEMU_TEST_THREADS)

test: unit-test qemu-test

bench: images update-bundles
	$(CARGO) build --release --locked -p cairn-runtime
	$(CARGO) bench --locked -p cairn-runtime --bench server -- --out $(abspath bench/results/server.json)
	$(CARGO) bench --locked -p cairn-runtime --bench agent -- --out $(abspath bench/results/agent.json)
	$(QEMU_TOOL) bench --boards "$(BOARDS)" --out bench/results/boot.json
	$(QEMU_TOOL) bench-update --boards "$(BOARDS)" --bundles $(OUT)/update-v2 --out bench/results/update.json

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --locked --workspace --all-targets -- -D warnings

clean:
	rm -rf $(OUT) target/qemu-tests
