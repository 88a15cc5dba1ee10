# An Auto Scaling group of instances that bootagent brings up: a launch template that requires
# IMDSv2 and exposes the instance's tags in metadata, launch and termination lifecycle hooks, a
# warm pool, an instance profile with least-privilege policies for one service in one
# environment, and bootagent's SSM document. Variables are in variables.tf.

terraform {
  required_providers {
    aws = {
      source  = "hashicorp/aws"
      version = ">= 5.0"
    }
  }
}

data "aws_caller_identity" "current" {}
data "aws_region" "current" {}

locals {
  name       = "${var.service}-${var.environment}"
  secret_arn = "arn:aws:secretsmanager:${data.aws_region.current.name}:${data.aws_caller_identity.current.account_id}:secret:${var.service}_env_${var.environment}-??????"
  group_arn  = "arn:aws:autoscaling:${data.aws_region.current.name}:${data.aws_caller_identity.current.account_id}:autoScalingGroup:*:autoScalingGroupName/${local.name}"
}

resource "aws_launch_template" "service" {
  name_prefix   = "${local.name}-"
  image_id      = var.ami_id
  instance_type = var.instance_type
  user_data     = filebase64("${path.module}/../cloud-init/enable-unit.yaml")

  iam_instance_profile {
    arn = aws_iam_instance_profile.service.arn
  }

  metadata_options {
    http_endpoint               = "enabled"
    http_tokens                 = "required" # IMDSv2 only
    instance_metadata_tags      = "enabled"  # bootagent reads Service, Environment, Repository here
    http_put_response_hop_limit = 2          # 2: containers on the instance reach IMDS too
  }

  tag_specifications {
    resource_type = "instance"
    tags = {
      Service     = var.service
      Environment = var.environment
      Repository  = var.repository
    }
  }
}

resource "aws_autoscaling_group" "service" {
  name                = local.name
  min_size            = var.min_size
  max_size            = var.max_size
  vpc_zone_identifier = var.subnet_ids
  target_group_arns   = var.target_group_arns
  health_check_type   = "ELB"

  launch_template {
    id      = aws_launch_template.service.id
    version = aws_launch_template.service.latest_version
  }

  # bootagent boot completes this hook (lifecycle.launch_hook): CONTINUE once the service is up
  # and healthy, ABANDON when the boot failed.
  initial_lifecycle_hook {
    name                 = "bootagent-launch"
    lifecycle_transition = "autoscaling:EC2_INSTANCE_LAUNCHING"
    default_result       = "ABANDON"
    heartbeat_timeout    = 900
  }

  # bootagent lifecycle watch drains (health answers 503), stops the service and completes it.
  initial_lifecycle_hook {
    name                 = "bootagent-termination"
    lifecycle_transition = "autoscaling:EC2_INSTANCE_TERMINATING"
    default_result       = "CONTINUE"
    heartbeat_timeout    = 300
  }

  # Instances in the pool are prepared (secrets, checkout) but their service starts only when
  # they enter service.
  warm_pool {
    pool_state                  = "Stopped"
    min_size                    = var.warm_pool_size
    max_group_prepared_capacity = var.max_size
  }
}

resource "aws_iam_role" "service" {
  name = local.name
  assume_role_policy = jsonencode({
    Version = "2012-10-17"
    Statement = [{
      Effect    = "Allow"
      Principal = { Service = "ec2.amazonaws.com" }
      Action    = "sts:AssumeRole"
    }]
  })
}

resource "aws_iam_instance_profile" "service" {
  name = local.name
  role = aws_iam_role.service.name
}

# The environment's secrets only, decrypted through Secrets Manager with that key only.
resource "aws_iam_role_policy" "secrets" {
  name = "bootagent-secrets"
  role = aws_iam_role.service.id
  policy = templatefile("${path.module}/policies/secrets.json.tftpl", {
    secret_arn  = local.secret_arn
    kms_key_arn = var.kms_key_arn
    region      = data.aws_region.current.name
  })
}

# Lifecycle actions on this group only.
resource "aws_iam_role_policy" "lifecycle" {
  name = "bootagent-lifecycle"
  role = aws_iam_role.service.id
  policy = templatefile("${path.module}/policies/lifecycle.json.tftpl", {
    group_arn = local.group_arn
  })
}

# Only when tags in metadata cannot be enabled (identity.describe_tags_fallback = true).
resource "aws_iam_role_policy" "describe_tags" {
  count  = var.describe_tags_fallback ? 1 : 0
  name   = "bootagent-describe-tags"
  role   = aws_iam_role.service.id
  policy = file("${path.module}/policies/describe-tags.json")
}

# SSM Run Command for operators: `bootagent doctor` on the instance.
resource "aws_iam_role_policy_attachment" "ssm" {
  role       = aws_iam_role.service.name
  policy_arn = "arn:aws:iam::aws:policy/AmazonSSMManagedInstanceCore"
}

resource "aws_ssm_document" "doctor" {
  name            = "bootagent-doctor"
  document_type   = "Command"
  document_format = "JSON"
  content         = file("${path.module}/../../ssm-bootagent-doctor.json")
}
