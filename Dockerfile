# Flex Template image for synanno-datagen: Beam's Python SDK image (also used for the workers, via
# sdkContainerImage, so workers match the launcher) plus Dataflow's Python template launcher and
# this package. Built remotely by 'launch_dataflow.sh build-template' (Cloud Build).
ARG BEAM_VERSION=2.77.0
FROM gcr.io/dataflow-templates-base/python311-template-launcher-base:latest AS launcher

FROM apache/beam_python3.11_sdk:${BEAM_VERSION}
COPY --from=launcher /opt/google/dataflow/python_template_launcher \
     /opt/google/dataflow/python_template_launcher
WORKDIR /template
COPY setup.py README.md metadata.json ./
COPY synanno_datagen ./synanno_datagen
COPY pipeline ./pipeline
COPY transforms ./transforms
RUN pip install --no-cache-dir .
ENV FLEX_TEMPLATE_PYTHON_PY_FILE=/template/pipeline/flex.py \
    FLEX_TEMPLATE_PYTHON_SETUP_FILE=/template/setup.py
ENTRYPOINT ["/opt/google/dataflow/python_template_launcher"]
