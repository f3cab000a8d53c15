# One venv at .venv/ for development, tests and the demo.
VENV ?= .venv
PY := $(VENV)/bin/python
PYTEST_ARGS ?=
# the ROS 2 command line (ros2 launch/run/param, colcon) for machines without a ROS install
ROS2_CLI ?= ../shared/ros2-cli

.PHONY: setup lint test demo bench clean

$(VENV)/.installed: requirements-dev.txt setup.py
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements-dev.txt
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $@

# nothing to do where `ros2` exists (a ROS install) or ../shared/ros2-cli does not (users' machines);
# the stamp is written only once ros2 is there, so ../shared appearing later is picked up;
# colcon-bash writes install/setup.bash, which the README sources as on a ROS install
$(VENV)/.ros2-cli: $(VENV)/.installed
	@if command -v ros2 >/dev/null 2>&1; then echo "ros2 found: $$(command -v ros2)"; touch $@; \
	elif [ -f $(ROS2_CLI)/install.sh ]; then bash $(ROS2_CLI)/install.sh $(PY) && \
	  $(PY) -m pip install --quiet colcon-bash && touch $@; \
	else echo "no ros2 and no $(ROS2_CLI): the ROS 2 CLI tests will skip"; fi

setup: $(VENV)/.installed $(VENV)/.ros2-cli

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check .

test: $(VENV)/.installed $(VENV)/.ros2-cli lint
	$(PY) -m pytest -q $(PYTEST_ARGS)

demo: $(VENV)/.installed
	$(VENV)/bin/seg-ros demo

bench: $(VENV)/.installed
	$(VENV)/bin/seg-ros bench --model ddrnet23_slim --size 512x1024 --runs 20

clean:
	rm -rf $(VENV) build *.egg-info
