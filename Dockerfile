# One image for the Flex Template launcher and the Dataflow workers (the launch request passes it as
# sdkContainerImage), as in Google's "Build custom container images for Dataflow" and its
# flex-templates pipeline_with_dependencies sample: Beam's Python SDK image with this package
# installed, Dataflow's template launcher binary copied in, and the SDK's /opt/apache/beam/boot
# as the entrypoint, which a worker container must run last at start-up. On the launcher VM
# Dataflow starts the binary at /opt/google/dataflow/python_template_launcher instead, which runs
# `python $FLEX_TEMPLATE_PYTHON_PY_FILE --name=value ...` with the template parameters. The package is installed here, so FLEX_TEMPLATE_PYTHON_SETUP_FILE stays
# unset (the launcher would install it again) and workers need no --setup_file.
# Built remotely by 'launch_dataflow.sh build-template' (Cloud Build); BEAM_VERSION must equal
# setup.py's pin (a test checks).
ARG BEAM_VERSION=2.77.0
# Google publishes the launcher base image under a rolling tag; pin a dated tag of
# gcr.io/dataflow-templates-base when you need a bit-for-bit reproducible image.
# hadolint ignore=DL3007
FROM gcr.io/dataflow-templates-base/python311-template-launcher-base:latest AS launcher

FROM apache/beam_python3.11_sdk:${BEAM_VERSION}
COPY --from=launcher /opt/google/dataflow/python_template_launcher \
     /opt/google/dataflow/python_template_launcher
WORKDIR /src
COPY setup.py README.md metadata.json ./
COPY synanno_datagen ./synanno_datagen
COPY pipeline ./pipeline
COPY transforms ./transforms
RUN pip install --no-cache-dir .
ENV FLEX_TEMPLATE_PYTHON_PY_FILE=/src/pipeline/flex.py
# Containers start elsewhere: Beam's boot starts workers with `python -m ...`, which puts the
# working directory first on sys.path, where /src/synanno_datagen (without the pipeline and
# transforms that setup.py maps into the installed package) would shadow the installed one.
WORKDIR /
ENTRYPOINT ["/opt/apache/beam/boot"]
