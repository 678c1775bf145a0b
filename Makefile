# Everyday commands. The README and .ci/run call the same scripts.
.PHONY: demo test stack stop status build lint fmt schemas image check-deploy

demo:           ## the stack, a worker, the seed 000 job and its result
	bash deploy/local/demo.sh

test:           ## the whole suite against the real local stack (what CI runs)
	bash deploy/local/test.sh

stack:          ## start RabbitMQ, the two dockerds, the registries and the token server
	bash deploy/local/start.sh

stop:           ## stop everything the stack scripts and the demo started
	bash deploy/local/stop.sh

status:
	bash deploy/local/status.sh

build:
	cargo build --workspace

image:          ## the worker image pushfleet:dev, built by the local Docker daemon without pulls
	bash deploy/image/build.sh

check-deploy:   ## the compose file and the Kubernetes manifests: schemas (Kubernetes, KEDA) and rules
	bash deploy/check.sh

lint:           ## formatting and clippy, warnings as errors
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets -- -D warnings

fmt:
	cargo fmt --all

schemas:        ## regenerate schemas/ from the Rust types
	cargo run -q --bin pushfleet -- schemas --write schemas/
