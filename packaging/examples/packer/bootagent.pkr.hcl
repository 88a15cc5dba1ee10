# Bakes an Amazon Linux 2023 image with bootagent: the rpm from this directory's build, the
# image's settings, the pinned host key of the git server, and (with `repository` set) a git
# seed: `bootagent prepare` fetches the service's branches into the image, so that a first boot
# fetches only the commits made since the bake. The package enables the units without starting
# the boot, so the build instance boots nothing.
#   packer init . && packer build -var version=0.1.0 -var repository=https://git.example/app.git .

packer {
  required_plugins {
    amazon = {
      source  = "github.com/hashicorp/amazon"
      version = ">= 1.3.0"
    }
  }
}

variable "version" {
  type    = string
  default = "0.1.0"
}

variable "arch" {
  type    = string
  default = "aarch64"
}

variable "repository" {
  type        = string
  default     = ""
  description = "The service's repository, as its Repository tag gives it at boot; empty: no seed"
}

variable "git_token" {
  type        = string
  default     = ""
  sensitive   = true
  description = "The HTTPS deploy token the bake fetches the seed with (read-only); empty: none"
}

variable "region" {
  type    = string
  default = "eu-west-1"
}

source "amazon-ebs" "al2023" {
  region        = var.region
  instance_type = var.arch == "aarch64" ? "t4g.small" : "t3.small"
  ssh_username  = "ec2-user"
  ami_name      = "bootagent-${var.version}-${var.arch}-{{timestamp}}"

  source_ami_filter {
    filters = {
      name         = "al2023-ami-2023.*-kernel-*-${var.arch == "aarch64" ? "arm64" : "x86_64"}"
      architecture = var.arch == "aarch64" ? "arm64" : "x86_64"
    }
    owners      = ["amazon"]
    most_recent = true
  }

  metadata_options {
    http_endpoint               = "enabled"
    http_tokens                 = "required"
    http_put_response_hop_limit = 2
    instance_metadata_tags      = "enabled"
  }
}

build {
  sources = ["source.amazon-ebs.al2023"]

  provisioner "file" {
    source      = "bootagent-${var.version}-1.${var.arch}.rpm"
    destination = "/tmp/bootagent.rpm"
  }

  provisioner "file" {
    source      = "known_hosts"
    destination = "/tmp/known_hosts"
  }

  # The token as a file's content, never on a command line; removed once the seed is taken.
  provisioner "file" {
    content     = var.git_token
    destination = "/tmp/git-token"
  }

  provisioner "shell" {
    inline = [
      "sudo dnf install -y /tmp/bootagent.rpm",
      "sudo install -m 0644 /tmp/known_hosts /etc/bootagent/known_hosts",
      "printf '[service]\\nuser = \"app\"\\n' | sudo tee /etc/bootagent/config.d/10-image.toml",
      "sudo systemctl is-enabled bootagent-boot.service",
      "bootagent --version",
      # After the image's config, whose git settings (depth, allow_rewind) the seed follows:
      # every environment's ref of git.ref, each as an instance of it would fetch.
      "if [ -n '${var.repository}' ]; then sudo bootagent prepare --repository '${var.repository}' $([ -s /tmp/git-token ] && echo --token-file /tmp/git-token); fi",
      "rm -f /tmp/git-token",
      # Each instance seals its snapshot of secrets with a host key of its own, made on first
      # use: none may be baked into the image, nor a snapshot.
      "sudo rm -f /var/lib/systemd/credential.secret /var/lib/bootagent/secrets.snapshot",
    ]
  }
}
