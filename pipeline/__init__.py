"""The generator's driver: options, validation, storage probes, the incremental plan, build (the
assembly), the manifest, the Flex Template entry and the demo data. Beam stages live in
synanno_datagen.transforms."""
