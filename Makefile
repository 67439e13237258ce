# Shortcuts for scripts/dev, which needs no make (see README).
.PHONY: setup demo test test-unit lint ui bench stack stack-down clean
setup demo test test-unit lint ui bench stack stack-down:
	@scripts/dev $@ $(ARGS)
clean:
	rm -rf data bench-data
