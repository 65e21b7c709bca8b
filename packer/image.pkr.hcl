# phoenix.deploy image template (HCL2, works with Packer 1.6.6 and newer).
#
# One template, one set of roles (roles/base_image + roles/app_service,
# applied by packer/bake.yml), several targets:
#
#   null.local        -> a local image: the roles run with a local connection
#                        into var.image_root (a directory). The engine
#                        (plugins/module_utils/images.py, used by the
#                        phoenix.deploy.image_bake module) then computes the
#                        content digest, writes image.json next to the root and
#                        makes the bundle read-only.
#   googlecompute.gce -> a GCE image from a Debian image family, the same roles
#                        applied by the `ansible` provisioner; image family per
#                        artifact.
#
# The manifest post-processor records each build in var.manifest_path; the
# engine reads that file (never Packer's human output).
#
# Normally run through phoenix.deploy.image_bake. By hand:
#   packer build -only=null.local -var artifact=catalog -var version=1.0.0+34e57f0.b1 \
#     -var image_name=catalog-v1-0-0--34e57f0-b1 -var source_dir=$PWD/examples/catalog \
#     -var image_root=/tmp/img/rootfs -var manifest_path=/tmp/img/manifest.json packer/image.pkr.hcl

variable "artifact" {
  type        = string
  description = "Artifact name, e.g. catalog."
}

variable "version" {
  type        = string
  description = "Exact semver version, e.g. 1.5.6+34e57f0.b456 (never latest)."
}

variable "image_name" {
  type        = string
  description = "Deterministic image name (phoenix.deploy.image_name filter)."
}

variable "source_dir" {
  type        = string
  description = "Directory holding the artifact to install (absolute path)."
}

variable "entrypoint" {
  type        = string
  default     = ""
  description = "Script inside source_dir that starts the service; default <artifact>.py."
}

variable "fault" {
  type        = string
  default     = "{}"
  description = "JSON fault baked into the image, e.g. {\"error_rate\": 0.5}; {} for none."
}

variable "git_hash" {
  type    = string
  default = ""
}

variable "build_id" {
  type    = string
  default = ""
}

variable "input_digest" {
  type        = string
  default     = ""
  description = "Input digest computed by the engine (recorded in the manifest)."
}

variable "manifest_path" {
  type        = string
  default     = "manifest.json"
  description = "Where the manifest post-processor writes."
}

# --- local target -------------------------------------------------------------
variable "image_root" {
  type        = string
  default     = ""
  description = "local: the image root directory the roles install into."
}

variable "python" {
  type        = string
  default     = "python3"
  description = "local: the Python the service runs with (baked into the launcher) and Ansible uses."
}

variable "ansible_playbook" {
  type        = string
  default     = "ansible-playbook"
  description = "local: the ansible-playbook executable."
}

# --- gce target ----------------------------------------------------------------
variable "project_id" {
  type    = string
  default = ""
}

variable "zone" {
  type    = string
  default = "europe-west1-b"
}

variable "source_image_family" {
  type    = string
  default = "debian-12"
}

variable "source_image_project_id" {
  type    = string
  default = "debian-cloud"
}

variable "machine_type" {
  type    = string
  default = "e2-small"
}

variable "network" {
  type    = string
  default = "default"
}

variable "subnetwork" {
  type    = string
  default = ""
}

variable "ssh_username" {
  type    = string
  default = "packer"
}

locals {
  # What the roles get (packer/bake.yml), as role variables (prefixed with the
  # role's name); identical for every target except the image root and the
  # Python, which describe where and with what the service runs.
  role_vars = {
    app_service_artifact     = var.artifact
    app_service_version      = var.version
    app_service_image_name   = var.image_name
    app_service_source       = var.source_dir
    app_service_entrypoint   = var.entrypoint
    app_service_fault        = jsondecode(var.fault)
    app_service_git_hash     = var.git_hash
    app_service_build_id     = var.build_id
    app_service_input_digest = var.input_digest
  }
  local_vars = jsonencode(merge(local.role_vars, {
    base_image_root            = var.image_root
    base_image_runtime_python  = var.python
    app_service_image_root     = var.image_root
    app_service_runtime_python = var.python
    ansible_python_interpreter = var.python
  }))
  gce_vars = jsonencode(merge(local.role_vars, {
    base_image_root            = "/"
    base_image_runtime_python  = "/usr/bin/python3"
    app_service_image_root     = "/"
    app_service_runtime_python = "/usr/bin/python3"
  }))
  manifest_data = {
    artifact     = var.artifact
    version      = var.version
    image_name   = var.image_name
    input_digest = var.input_digest
    image_root   = var.image_root
  }
}

source "null" "local" {
  communicator = "none"
}

source "googlecompute" "gce" {
  project_id              = var.project_id
  zone                    = var.zone
  source_image_family     = var.source_image_family
  source_image_project_id = [var.source_image_project_id]
  machine_type            = var.machine_type
  network                 = var.network
  subnetwork              = var.subnetwork
  ssh_username            = var.ssh_username
  image_name              = var.image_name
  image_family            = var.artifact
  image_description       = "${var.artifact} ${var.version} (phoenix.deploy, input ${var.input_digest})"
  image_labels = {
    artifact  = var.artifact
    image     = var.image_name
    git_hash  = var.git_hash
    build_id  = var.build_id
    baked_by  = "phoenix-deploy"
  }
}

build {
  name    = "local"
  sources = ["source.null.local"]

  provisioner "shell-local" {
    environment_vars = [
      "ANSIBLE_CONFIG=${path.root}/ansible.cfg",
      # the bake's roles, whatever roles path the caller has (ansible-test sets one)
      "ANSIBLE_ROLES_PATH=${path.root}/../roles",
      "PHOENIX_BAKE_VARS=${local.local_vars}",
    ]
    inline = [
      "set -e",
      "test -n '${var.image_root}' || { echo 'image_root is required for null.local' >&2; exit 2; }",
      "mkdir -p '${var.image_root}'",
      "'${var.ansible_playbook}' -i localhost, -c local '${path.root}/bake.yml' -e \"$PHOENIX_BAKE_VARS\"",
    ]
  }

  post-processor "manifest" {
    output      = var.manifest_path
    strip_path  = true
    custom_data = local.manifest_data
  }
}

build {
  name    = "gce"
  sources = ["source.googlecompute.gce"]

  provisioner "ansible" {
    playbook_file    = "${path.root}/bake.yml"
    user             = var.ssh_username
    ansible_env_vars = ["ANSIBLE_CONFIG=${path.root}/ansible.cfg", "ANSIBLE_ROLES_PATH=${path.root}/../roles"]
    extra_arguments  = ["--become", "--extra-vars", local.gce_vars]
  }

  post-processor "manifest" {
    output      = var.manifest_path
    strip_path  = true
    custom_data = local.manifest_data
  }
}
