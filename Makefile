# Convenience targets; each is one of the scripts in scripts/ (run as root).
.PHONY: demo test bench install
demo:
	bash scripts/demo.sh
test:
	bash scripts/test.sh
bench:
	bash scripts/bench.sh
install:
	bash scripts/setup.sh
